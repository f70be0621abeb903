"""Bookkeeping of the paged KV cache: block tables, reference counts, prefix cache, copy-on-write.

The KV cache is `num_blocks` blocks of `block_size` token slots. Each sequence holds a block table:
the ids of its blocks in token order. Blocks are reference counted, so forks (beam search, parallel
sampling) and prefix-cache hits share blocks; a shared block is copied before anyone writes into it.

A full, computed block can be published under its key (`block_keys`: a chained hash of every token
up to the block's end, plus digests of injected embeddings). A later sequence whose keys match takes
the block instead of recomputing it. When its last holder frees it, a published block stays cached
but evictable. Fresh blocks come from free blocks without a key first, then by evicting the least
recently freed cached block.

Every block with ref_count 0 is free: either in `_empty` (no key) or in `_evictable` (keyed, in the
order it was freed). This module never touches tensors: the model runner applies the copies that
`prepare_write` returns, before the step's KV writes, and writes KV at the slots `slot` gives.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence

import numpy as np

BlockKey = int  # chained hash of one full block


def block_keys(
    token_ids: Sequence[int],
    block_size: int,
    extras: Sequence[bytes | None] = (),
    parent: BlockKey | None = None,
) -> list[BlockKey]:
    """Keys of the FULL blocks of a token sequence; a partial last block has none.

    Key i hashes (key i-1, the block's token ids, extras[i] if given). `extras[i]` is a digest of
    whatever else determines the block's KV (injected audio/image embeddings overlapping block i);
    None or b"" means the token ids alone. `parent` is the key of the block before `token_ids[0]`,
    so a sequence's keys can be extended block by block. Keys are stable across processes.
    """
    tokens = np.asarray(token_ids, dtype="<i8")
    keys: list[BlockKey] = []
    for i in range(len(tokens) // block_size):
        extra = extras[i] if i < len(extras) else None
        parent = _hash_block(parent, tokens[i * block_size : (i + 1) * block_size], extra)
        keys.append(parent)
    return keys


def _hash_block(parent: BlockKey | None, tokens: np.ndarray, extra: bytes | None) -> BlockKey:
    h = hashlib.blake2b(digest_size=8)
    # Flag byte and token count make the byte string unambiguous, so only real collisions collide.
    h.update(b"\x00" if parent is None else b"\x01" + parent.to_bytes(8, "little"))
    h.update(len(tokens).to_bytes(4, "little"))
    h.update(tokens.tobytes())
    if extra:
        h.update(extra)
    return int.from_bytes(h.digest(), "little")


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks  # read it, never write it, outside this class
        self._keys: list[BlockKey | None] = [None] * num_blocks
        self._cache: dict[BlockKey, int] = {}  # key -> the one block that owns it
        self._empty: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        self._hits = 0
        self._evictions = 0
        self._copies = 0

    @property
    def num_free(self) -> int:
        return len(self._empty) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cache)

    def stats(self) -> dict[str, int]:
        """hits: cached blocks taken by `allocate`; evictions; copies: copy-on-write copies."""
        return {"hits": self._hits, "evictions": self._evictions, "copies": self._copies}

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, keys: Sequence[BlockKey]) -> list[int]:
        """Block ids of the longest prefix of `keys` in the prefix cache; takes nothing.

        Pass the keys of at most (num_tokens - 1) // block_size blocks, so the last prompt token is
        computed (it yields the logits) in a private block.
        """
        blocks = []
        for key in keys:
            block = self._cache.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def allocate(self, table: list[int], num_tokens: int, cached: Sequence[int] = ()) -> bool:
        """Grow `table` in place to hold `num_tokens` slots; all or nothing.

        `cached` (from `cached_prefix`, in the same scheduler step, only into an empty table) is
        taken first, so the fresh blocks can never evict it. Returns False, changing nothing, when
        too few blocks are free. Never shrinks a table.
        """
        if not cached and num_tokens <= len(table) * self.block_size:
            return True  # already room: most decode steps
        if cached and table:
            raise ValueError("cached blocks can only start an empty table")
        if any(self._keys[b] is None for b in cached):
            raise ValueError("a cached block was evicted since cached_prefix")
        num_fresh = self.num_blocks_for(num_tokens) - len(table) - len(cached)
        if num_fresh < 0 and cached:
            raise ValueError(f"{len(cached)} cached blocks exceed {num_tokens} tokens")
        # Reviving an unreferenced cached block uses up one free block too.
        num_revived = sum(1 for b in cached if self.ref_counts[b] == 0)
        if max(num_fresh, 0) + num_revived > self.num_free:
            return False
        for block in cached:
            self._take(block)
        self._hits += len(cached)
        table.extend(cached)
        table.extend(self._take_fresh() for _ in range(num_fresh))
        return True

    def free(self, table: list[int]) -> None:
        """Release a sequence's blocks and clear `table`; keyed blocks stay cached, evictable."""
        for block, n in Counter(table).items():
            if self.ref_counts[block] < n:
                raise ValueError(f"block {block} freed more often than taken")
        # Reverse order: the tail is freed first, so it is evicted first and the head of the
        # prompt, the part most likely to be shared, survives longest.
        for block in reversed(table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self._keys[block] is None:
                    self._empty.append(block)
                else:
                    self._evictable[block] = None
        table.clear()

    def fork(self, table: list[int]) -> list[int]:
        """A new table sharing every block of `table`."""
        for block in table:
            assert self.ref_counts[block] > 0, f"fork of free block {block}"
            self.ref_counts[block] += 1
        return list(table)

    def prepare_write(self, table: list[int], start: int, end: int) -> list[tuple[int, int]] | None:
        """Copy-on-write before the sequence writes token slots [start, end).

        Each block in that range with ref_count > 1 is replaced in `table` by a fresh private
        block. Returns the (src_block, dst_block) copies the runner must apply to the KV tensors
        before writing. Returns None, changing nothing, when too few blocks are free (like
        `allocate` returning False: the scheduler preempts someone and retries). Never write after
        a None: the range still holds shared blocks.
        """
        indices = self._shared_indices(table, start, end)
        if not indices:  # nothing shared: every decode step of an unforked sequence
            return []
        if len(indices) > self.num_free:
            return None
        copies = []
        for i in indices:
            src, dst = table[i], self._take_fresh()
            self.ref_counts[src] -= 1  # stays > 0: another table still holds it
            table[i] = dst
            copies.append((src, dst))
        self._copies += len(copies)
        return copies

    def publish(self, table: list[int], keys: Sequence[BlockKey]) -> None:
        """Register the first len(keys) blocks of `table` (full and computed) under `keys`.

        A key another block already owns is left to it (first writer wins); this block then
        stays private and goes back to the empty pool when freed.
        """
        if len(keys) > len(table):
            raise ValueError(f"{len(keys)} keys for a table of {len(table)} blocks")
        for block, key in zip(table, keys, strict=False):
            if self._keys[block] is not None:
                if self._keys[block] != key:
                    raise ValueError(f"block {block} is already published under another key")
                continue
            if key not in self._cache:
                self._cache[key] = block
                self._keys[block] = key

    def _shared_indices(self, table: list[int], start: int, end: int) -> list[int]:
        if end <= start:
            return []
        if start < 0 or end > len(table) * self.block_size:
            raise ValueError(f"write [{start}, {end}) outside the table; allocate first")
        first, last = start // self.block_size, (end - 1) // self.block_size
        return [i for i in range(first, last + 1) if self.ref_counts[table[i]] > 1]

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._evictable[block]  # an unreferenced keyed block is always evictable
        self.ref_counts[block] += 1

    def _take_fresh(self) -> int:
        if self._empty:
            block = self._empty.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            key = self._keys[block]
            assert key is not None
            del self._cache[key]
            self._keys[block] = None
            self._evictions += 1
        self.ref_counts[block] = 1
        return block
