"""Block manager: chained block keys, prefix reuse, LRU eviction, fork and copy-on-write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.block_manager import BlockKey, BlockManager, block_keys

# keys


def test_same_tokens_same_keys():
    assert block_keys(list(range(12)), 4) == block_keys(list(range(12)), 4)
    assert len(block_keys(list(range(12)), 4)) == 3


def test_token_in_block0_changes_every_key():
    a = block_keys(list(range(12)), 4)
    b = block_keys([99, *range(1, 12)], 4)
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_token_in_later_block_keeps_earlier_keys():
    a = block_keys(list(range(12)), 4)
    b = block_keys([*range(9), 99, 10, 11], 4)
    assert a[:2] == b[:2] and a[2] != b[2]


def test_extras_change_their_block_and_later():
    tokens = list(range(16))
    plain = block_keys(tokens, 4)
    audio = block_keys(tokens, 4, extras=[None, b"audio-1"])
    other = block_keys(tokens, 4, extras=[None, b"audio-2"])
    assert audio[0] == plain[0]
    assert all(x != y for x, y in zip(audio[1:], plain[1:], strict=True))
    assert all(x != y for x, y in zip(audio[1:], other[1:], strict=True))
    assert block_keys(tokens, 4, extras=[None, None, None, None]) == plain


def test_partial_last_block_has_no_key():
    assert block_keys(list(range(10)), 4) == block_keys(list(range(8)), 4)
    assert block_keys([1, 2, 3], 4) == []


def test_parent_extends_a_chain():
    tokens = list(range(12))
    keys = block_keys(tokens, 4, extras=[None, b"x"])
    assert block_keys(tokens[4:], 4, extras=[b"x"], parent=keys[0]) == keys[1:]


def test_keys_are_stable_across_processes():
    code = "from engine.block_manager import block_keys; print(block_keys(range(8), 4, [b'a']))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == str(block_keys(range(8), 4, [b"a"]))


# prefix reuse


def test_prefix_reuse_takes_exactly_the_matching_blocks():
    bm = BlockManager(16, 4)
    a_tokens = list(range(14))  # 3 full blocks + a partial one
    a: list[int] = []
    assert bm.allocate(a, len(a_tokens))
    bm.publish(a, block_keys(a_tokens, 4))
    assert bm.num_cached_blocks == 3

    b_tokens = [*range(8), 50, 51, 52, 53, 54]  # first 2 full blocks equal
    keys = block_keys(b_tokens, 4)
    cached = bm.cached_prefix(keys)
    assert cached == a[:2]
    assert [bm.ref_counts[x] for x in a] == [1, 1, 1, 1]  # cached_prefix takes nothing
    free_before = bm.num_free

    b: list[int] = []
    assert bm.allocate(b, len(b_tokens), cached)
    assert b[:2] == a[:2] and not set(b[2:]) & set(a)
    assert [bm.ref_counts[x] for x in b] == [2, 2, 1, 1]
    assert bm.num_free == free_before - 2
    assert bm.stats()["hits"] == 2


def test_differing_extras_stop_reuse_at_their_block():
    bm = BlockManager(16, 4)
    tokens = list(range(16))
    a: list[int] = []
    assert bm.allocate(a, 16)
    bm.publish(a, block_keys(tokens, 4, extras=[None, None, b"audio-1"]))
    assert bm.cached_prefix(block_keys(tokens, 4, extras=[None, None, b"audio-1"])) == a
    assert bm.cached_prefix(block_keys(tokens, 4, extras=[None, None, b"audio-2"])) == a[:2]


def test_publish_first_writer_wins():
    bm = BlockManager(8, 4)
    keys = block_keys(range(8), 4)
    a: list[int] = []
    b: list[int] = []
    assert bm.allocate(a, 8) and bm.allocate(b, 8)
    bm.publish(a, keys)
    bm.publish(b, keys)
    assert bm.cached_prefix(keys) == a and bm.num_cached_blocks == 2
    bm.free(b)  # b's blocks were never published: they return as plain free blocks
    assert bm.cached_prefix(keys) == a and bm.num_cached_blocks == 2


# LRU


def test_freed_cached_blocks_are_reused():
    bm = BlockManager(8, 4)
    tokens = list(range(10))
    a: list[int] = []
    assert bm.allocate(a, 10)
    bm.publish(a, block_keys(tokens, 4))
    old = list(a)
    bm.free(a)
    assert a == [] and bm.num_free == 8 and bm.num_cached_blocks == 2

    cached = bm.cached_prefix(block_keys(tokens, 4))
    assert cached == old[:2]
    b: list[int] = []
    assert bm.allocate(b, 10, cached)
    assert b[:2] == old[:2] and [bm.ref_counts[x] for x in b] == [1, 1, 1]
    assert bm.num_free == 5


def test_never_used_blocks_go_before_cached_ones():
    bm = BlockManager(4, 2)
    a: list[int] = []
    assert bm.allocate(a, 4)
    bm.publish(a, block_keys(range(4), 2))
    bm.free(a)
    c: list[int] = []
    assert bm.allocate(c, 4)
    assert c == [2, 3] and bm.num_cached_blocks == 2 and bm.stats()["evictions"] == 0


def test_least_recently_freed_block_is_evicted_first():
    bm = BlockManager(4, 2)
    a_keys, b_keys = block_keys(range(4), 2), block_keys(range(10, 14), 2)
    a: list[int] = []
    b: list[int] = []
    assert bm.allocate(a, 4) and bm.allocate(b, 4)
    bm.publish(a, a_keys)
    bm.publish(b, b_keys)
    a_blocks, b_blocks = list(a), list(b)
    bm.free(a)
    bm.free(b)

    c: list[int] = []
    assert bm.allocate(c, 2)
    assert c == [a_blocks[1]]  # a was freed first, and its tail before its head
    assert bm.cached_prefix(a_keys) == a_blocks[:1]
    assert bm.cached_prefix(b_keys) == b_blocks
    assert bm.allocate(c, 4)
    assert c[1] == a_blocks[0] and bm.cached_prefix(a_keys) == []
    assert bm.stats()["evictions"] == 2 and bm.num_cached_blocks == 2


def test_reviving_a_cached_block_makes_it_recent():
    bm = BlockManager(4, 2)
    a_keys, b_keys = block_keys(range(2), 2), block_keys(range(10, 12), 2)
    a: list[int] = []
    b: list[int] = []
    assert bm.allocate(a, 2) and bm.allocate(b, 2)
    bm.publish(a, a_keys)
    bm.publish(b, b_keys)
    a_block, b_block = a[0], b[0]
    bm.free(a)
    bm.free(b)
    assert bm.allocate(a, 2, bm.cached_prefix(a_keys)) and a == [a_block]
    bm.free(a)  # a is now the most recently freed: b goes first

    c: list[int] = []
    assert bm.allocate(c, 6)  # 2 never-used blocks, then one eviction
    assert c[2] == b_block and bm.cached_prefix(a_keys) == [a_block]


# allocation and free


def test_allocate_is_all_or_nothing():
    bm = BlockManager(4, 4)
    a: list[int] = []
    assert bm.allocate(a, 9) and len(a) == 3 and bm.num_free == 1
    b: list[int] = []
    assert not bm.allocate(b, 8)
    assert b == [] and bm.num_free == 1
    assert not bm.allocate(a, 17)
    assert len(a) == 3 and bm.num_free == 1
    assert bm.allocate(a, 12) and len(a) == 3  # already fits: nothing taken
    assert bm.allocate(a, 16) and len(a) == 4 and bm.num_free == 0


def test_reviving_cached_blocks_counts_against_free_blocks():
    bm = BlockManager(4, 4)
    keys = block_keys(range(8), 4)
    a: list[int] = []
    assert bm.allocate(a, 8)
    bm.publish(a, keys)
    bm.free(a)
    assert bm.num_free == 4

    b: list[int] = []
    assert not bm.allocate(b, 20, bm.cached_prefix(keys))  # 2 revived + 3 fresh > 4
    assert b == [] and bm.num_free == 4 and bm.num_cached_blocks == 2
    assert bm.allocate(b, 16, bm.cached_prefix(keys))  # 2 revived + 2 fresh
    assert bm.num_free == 0 and bm.stats()["evictions"] == 0


def test_cached_blocks_need_an_empty_table():
    bm = BlockManager(4, 4)
    a: list[int] = []
    assert bm.allocate(a, 4)
    bm.publish(a, block_keys(range(4), 4))
    b: list[int] = []
    assert bm.allocate(b, 4)
    with pytest.raises(ValueError):
        bm.allocate(b, 8, a[:1])


def test_free_twice_is_an_error():
    bm = BlockManager(4, 4)
    a: list[int] = []
    assert bm.allocate(a, 8)
    copy = list(a)
    bm.free(a)
    assert a == [] and bm.num_free == 4
    with pytest.raises(ValueError):
        bm.free(copy)
    assert bm.ref_counts == [0, 0, 0, 0] and bm.num_free == 4


# fork and copy-on-write


def test_fork_then_write_copies_the_shared_last_block():
    bm = BlockManager(8, 4)
    a: list[int] = []
    assert bm.allocate(a, 6)
    b = bm.fork(a)
    assert b == a and [bm.ref_counts[x] for x in a] == [2, 2]
    a_before = list(a)

    copies = bm.prepare_write(b, 6, 7)
    assert len(copies) == 1 and copies[0][0] == a[1]
    assert b == [a[0], copies[0][1]] and a == a_before
    assert bm.ref_counts[a[0]] == 2 and bm.ref_counts[a[1]] == 1 and bm.ref_counts[b[1]] == 1
    assert bm.prepare_write(b, 7, 8) == []  # b's last block is private now
    assert bm.prepare_write(a, 6, 8) == []  # and so is a's
    assert bm.stats()["copies"] == 1


def test_shared_block_before_start_is_never_copied():
    bm = BlockManager(8, 4)
    a: list[int] = []
    assert bm.allocate(a, 8)
    b = bm.fork(a)
    copies = bm.prepare_write(b, 4, 6)
    assert [src for src, _ in copies] == [a[1]] and b[0] == a[0]


def test_write_into_a_cached_block_held_by_another_sequence_copies_it():
    bm = BlockManager(8, 4)
    keys = block_keys(range(8), 4)
    a: list[int] = []
    assert bm.allocate(a, 8)
    bm.publish(a, keys)
    b: list[int] = []
    assert bm.allocate(b, 8, bm.cached_prefix(keys))
    copies = bm.prepare_write(b, 7, 8)
    assert copies == [(a[1], b[1])] and b[0] == a[0]
    assert bm.cached_prefix(keys) == a  # the cached original is untouched


def test_prepare_write_out_of_blocks_returns_none_and_changes_nothing():
    bm = BlockManager(2, 4)
    a: list[int] = []
    assert bm.allocate(a, 8)
    b = bm.fork(a)
    assert bm.num_free == 0
    assert bm.prepare_write(b, 0, 8) is None
    assert b == a and bm.ref_counts == [2, 2] and bm.num_free == 0


def test_prepare_write_beyond_the_table_is_an_error():
    bm = BlockManager(4, 4)
    a: list[int] = []
    assert bm.allocate(a, 4)
    with pytest.raises(ValueError):
        bm.prepare_write(a, 3, 5)


def slot(bm: BlockManager, table: list[int], position: int) -> int:
    """The flat KV slot of a token, as the model runner computes it."""
    index, offset = divmod(position, bm.block_size)
    return table[index] * bm.block_size + offset


# random workload: a simulated KV store checks every copy and every reuse

NUM_BLOCKS, BLOCK_SIZE = 12, 4
PREFIXES = [(), tuple(range(100, 106)), tuple(range(100, 112)), tuple(range(200, 209))]
DIGESTS = [None, b"audio-1", b"audio-2"]


@dataclass
class Seq:
    extras: list[bytes | None]
    tokens: list[int] = field(default_factory=list)  # computed: their KV is written
    table: list[int] = field(default_factory=list)


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.seqs: list[Seq] = []
        # KV stand-in: a slot holds (position, token, extras digest of its block)
        self.kv: list[tuple[int, int, bytes | None] | None] = [None] * NUM_BLOCKS * BLOCK_SIZE
        self.block_content: dict[BlockKey, list] = {}  # what a keyed block must hold

    def snapshot(self) -> tuple:
        tables = [list(s.table) for s in self.seqs]
        return list(self.bm.ref_counts), self.bm.num_free, dict(self.bm._cache), tables

    def content(self, seq: Seq, pos: int) -> tuple[int, int, bytes | None]:
        i = pos // BLOCK_SIZE
        return pos, seq.tokens[pos], seq.extras[i] if i < len(seq.extras) else None

    def write(self, seq: Seq, new_tokens: list[int]) -> bool:
        start, end = len(seq.tokens), len(seq.tokens) + len(new_tokens)
        before = self.snapshot()
        copies = self.bm.prepare_write(seq.table, start, end)
        if copies is None:
            assert self.snapshot() == before
            return False
        for src, dst in copies:  # what the model runner does, before any write
            lo, hi = src * BLOCK_SIZE, dst * BLOCK_SIZE
            self.kv[hi : hi + BLOCK_SIZE] = self.kv[lo : lo + BLOCK_SIZE]
        seq.tokens += new_tokens
        for pos in range(start, end):
            self.kv[slot(self.bm, seq.table, pos)] = self.content(seq, pos)
        return True

    @rule(
        prefix=st.sampled_from(PREFIXES),
        tail=st.lists(st.integers(0, 2), min_size=1, max_size=8),
        digest=st.sampled_from(DIGESTS),
    )
    def add(self, prefix: tuple[int, ...], tail: list[int], digest: bytes | None) -> None:
        tokens = [*prefix, *tail]
        seq = Seq(extras=[None, digest])  # block 1 carries "audio"
        keys = block_keys(tokens, BLOCK_SIZE, seq.extras)
        # The last token is always computed: it yields the logits.
        cached = self.bm.cached_prefix(keys[: (len(tokens) - 1) // BLOCK_SIZE])
        before = self.snapshot()
        if not self.bm.allocate(seq.table, len(tokens), cached):
            assert self.snapshot() == before and seq.table == []
            return
        seq.tokens = tokens[: len(cached) * BLOCK_SIZE]
        self.seqs.append(seq)
        for pos in range(len(seq.tokens)):  # a hit must hold exactly this sequence's KV
            assert self.kv[slot(self.bm, seq.table, pos)] == self.content(seq, pos)
        assert self.write(seq, tokens[len(cached) * BLOCK_SIZE :])

    @precondition(lambda self: self.seqs)
    @rule(i=st.integers(0, 99), new=st.lists(st.integers(0, 2), min_size=1, max_size=6))
    def grow(self, i: int, new: list[int]) -> None:
        seq = self.seqs[i % len(self.seqs)]
        before = self.snapshot()
        if not self.bm.allocate(seq.table, len(seq.tokens) + len(new)):
            assert self.snapshot() == before
            return
        self.write(seq, new)

    @precondition(lambda self: self.seqs)
    @rule(i=st.integers(0, 99))
    def fork(self, i: int) -> None:
        seq = self.seqs[i % len(self.seqs)]
        self.seqs.append(Seq(list(seq.extras), list(seq.tokens), self.bm.fork(seq.table)))

    @precondition(lambda self: self.seqs)
    @rule(i=st.integers(0, 99))
    def publish(self, i: int) -> None:
        seq = self.seqs[i % len(self.seqs)]
        keys = block_keys(seq.tokens, BLOCK_SIZE, seq.extras)
        self.bm.publish(seq.table, keys)
        assert len(self.bm.cached_prefix(keys)) == len(keys)
        for b, key in enumerate(keys):
            want = [self.content(seq, p) for p in range(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)]
            assert self.block_content.setdefault(key, want) == want

    @precondition(lambda self: self.seqs)
    @rule(i=st.integers(0, 99))
    def free(self, i: int) -> None:
        seq = self.seqs.pop(i % len(self.seqs))
        self.bm.free(seq.table)
        assert seq.table == []

    @invariant()
    def books_balance(self) -> None:
        held = Counter(b for s in self.seqs for b in s.table)
        assert self.bm.ref_counts == [held[b] for b in range(NUM_BLOCKS)]
        assert self.bm.num_free + len(held) == NUM_BLOCKS
        empty, evictable = list(self.bm._empty), list(self.bm._evictable)
        assert len(set(empty)) == len(empty) and not set(empty) & set(evictable)
        assert set(empty) | set(evictable) == set(range(NUM_BLOCKS)) - set(held)
        assert all(self.bm._keys[b] is None for b in empty)
        assert all(self.bm._keys[b] is not None for b in evictable)
        assert all(self.bm._keys[b] == key for key, b in self.bm._cache.items())

    @invariant()
    def kv_is_intact(self) -> None:
        for seq in self.seqs:
            for pos in range(len(seq.tokens)):
                assert self.kv[slot(self.bm, seq.table, pos)] == self.content(seq, pos)
        for key, b in self.bm._cache.items():
            assert self.kv[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE] == self.block_content[key]

    def teardown(self) -> None:
        for seq in self.seqs:
            self.bm.free(seq.table)
        assert self.bm.num_free == NUM_BLOCKS and not any(self.bm.ref_counts)


BlockManagerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_workload = BlockManagerMachine.TestCase
