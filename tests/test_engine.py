"""The engine's scheduling, paging and sampling, on the tiny Qwen3 checkpoint."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.engine import RequestError
from engine.request import BATCH, INTERACTIVE, InjectedEmbeds
from engine.sampling import SamplingParams
from tests.qwen3_golden import (
    agree_until_margin,
    checkpoint,
    engine,
    golden,
    golden_tensors,
    greedy,
    prompt_logits,
)

PROMPTS = golden()["checkpoints"]["untied"]["prompts"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return checkpoint("untied", tmp_path_factory.mktemp("qwen3"))


def all_match_golden(outputs: list[list[int]]) -> None:
    for out, p in zip(outputs, PROMPTS, strict=True):
        assert agree_until_margin(out, p["greedy_ids"], p["greedy_top2_margins"]), p["name"]


def run_all(eng, prompts=PROMPTS, n=12):
    return eng.generate([p["input_ids"] for p in prompts], greedy(n))


def test_scrambled_blocks_give_the_same_logits(model_dir):
    eng = engine(model_dir, num_blocks=64)
    # fragment the free list: take blocks in many small tables, free them in random order
    tables = [[] for _ in range(20)]
    for t in tables:
        eng.blocks.allocate(t, random.Random(0).randint(1, 8))
    random.Random(1).shuffle(tables)
    for t in tables:
        eng.blocks.free(t)
    p = PROMPTS[3]
    req_logits = prompt_logits(eng, p["input_ids"])
    torch.testing.assert_close(
        req_logits[p["logits_start"] :], golden_tensors()[p["logits"]], atol=1e-4, rtol=1e-4
    )


def test_greedy_is_the_same_alone_batched_chunked_and_preempted(model_dir):
    alone = [engine(model_dir).generate([p["input_ids"]], greedy(12))[0] for p in PROMPTS]
    all_match_golden(alone)
    all_match_golden(run_all(engine(model_dir)))  # batched
    all_match_golden(run_all(engine(model_dir, max_prefill_chunk=5, max_num_batched_tokens=7)))
    tight = engine(model_dir, num_blocks=16)  # 64 slots for ~130 tokens: preemption happens
    outputs = run_all(tight)
    all_match_golden(outputs)
    assert tight.blocks.num_free == 16


def test_preemption_is_by_recompute(model_dir):
    eng = engine(model_dir, num_blocks=16, enable_prefix_caching=False)
    reqs = [eng.add(p["input_ids"], greedy(12)) for p in PROMPTS]
    preempted = 0
    while eng.has_work():
        batch = eng.scheduler.schedule()
        preempted += len(batch.preempted)
        if batch:
            logits, sampling = eng.runner.run(batch)
            eng.scheduler.after_step(batch)
            from engine.sampler import sample

            for r, t in zip(sampling, sample(logits, sampling), strict=True):
                eng._append(r, t)
    assert preempted > 0
    all_match_golden([r.output_ids for r in reqs])


def test_prefix_cache_reuses_full_blocks(model_dir):
    eng = engine(model_dir)  # blocks of 4 tokens
    base = PROMPTS[3]["input_ids"]  # 37 tokens: 9 full blocks
    first = eng.add(base, greedy(2))
    while eng.has_work():
        eng.step()
    assert first.num_cached_tokens == 0
    k = 5
    prompt = base[: 4 * k] + [7, 8, 9, 10, 11, 12]
    second = eng.add(prompt, greedy(4))
    batch = eng.scheduler.schedule()
    assert second.num_cached_tokens == 4 * k
    assert batch.num_new_tokens == [len(prompt) - 4 * k]  # only the rest is computed
    # and the result is what a cold engine computes
    logits, _ = eng.runner.run(batch)
    cold = prompt_logits(engine(model_dir), prompt)
    torch.testing.assert_close(logits[0], cold[-1], atol=1e-4, rtol=1e-4)


def test_steps_of_whole_prompts_are_marked_fresh(model_dir):
    """`fresh` lets a backend skip the page table (FA4's dense path); a cached prefix, a prompt
    chunk after the first or a decode row in the step must clear it."""
    eng = engine(model_dir, max_prefill_chunk=16)
    attn = eng.runner.attention
    seen = []

    def recording(q, k_cache, v_cache, meta, scale):
        seen.append(meta.fresh)
        return attn(q, k_cache, v_cache, meta, scale)

    for layer in eng.model.model.layers:
        layer.self_attn.attn = recording
    layers = len(eng.model.model.layers)
    eng.add(PROMPTS[0]["input_ids"], greedy(2))  # 8 tokens
    eng.add(PROMPTS[2]["input_ids"][:14], greedy(2))
    eng.step()
    assert seen == [True] * layers  # two whole prompts, nothing cached
    seen.clear()
    eng.step()
    assert seen and not any(seen)  # decode rows
    while eng.has_work():
        eng.step()
    long = eng.add(PROMPTS[3]["input_ids"][::-1], greedy(1))  # 37 new tokens, chunks of 16
    fresh_steps = []
    while not long.output_ids:
        seen.clear()
        eng.step()
        fresh_steps.append(all(seen))
    assert fresh_steps == [True, False, False]  # only the first chunk has nothing before it


def test_prefix_cache_keys_include_injected_embeddings(model_dir):
    eng = engine(model_dir)
    case = golden()["checkpoints"]["untied"]["injected"]
    ids, a = case["input_ids"] + [5] * 12, case["span"][0]
    values = golden_tensors()[case["embeds"]]
    for embeds, want_cached in [(values, 0), (values, 20), (values + 1.0, 4)]:
        req = eng.add(ids, greedy(1), embeds=[InjectedEmbeds(a, embeds)])
        while eng.has_work():
            eng.step()
        # the 1st run caches everything; the same audio hits 5 full blocks (20 of 23 tokens);
        # other audio at the same placeholders shares only block 0, before the audio
        assert req.num_cached_tokens == want_cached


def test_priority_class_takes_the_place_of_batch_work(model_dir):
    eng = engine(model_dir, max_num_seqs=2)
    background = [eng.add(p["input_ids"], greedy(40), priority=BATCH) for p in PROMPTS[:2]]
    eng.step()
    urgent = eng.add(PROMPTS[0]["input_ids"], greedy(3), priority=INTERACTIVE)
    steps = 0
    while not urgent.finished:
        eng.step()
        steps += 1
    assert steps <= 4  # it did not wait for 40 tokens of batch work
    while eng.has_work():
        eng.step()
    assert all(len(r.output_ids) == 40 for r in background)


def test_sampling_knobs(model_dir):
    eng = engine(model_dir)
    ids = PROMPTS[1]["input_ids"]

    def run(**kw):
        return eng.generate([ids], SamplingParams(**{"max_tokens": 8, "ignore_eos": True, **kw}))[0]

    assert run(temperature=0.8, seed=3) == run(temperature=0.8, seed=3)
    assert run(temperature=1.5, seed=3) != run(temperature=1.5, seed=4)
    assert run(temperature=1.0, top_k=1, seed=5) == run(temperature=0.0)  # top-1 is greedy
    assert run(temperature=1.0, top_p=1e-6, seed=5) == run(temperature=0.0)
    assert len(run(temperature=0.0, max_tokens=3)) == 3
    # a seeded request samples the same tokens whatever unseeded requests share its batch
    seeded = SamplingParams(temperature=1.5, seed=7, max_tokens=8, ignore_eos=True)
    free = SamplingParams(temperature=1.5, max_tokens=8, ignore_eos=True)
    alone = eng.generate([ids], seeded)[0]
    reqs = [eng.add(PROMPTS[0]["input_ids"], free), eng.add(ids, seeded)]
    reqs.append(eng.add(PROMPTS[2]["input_ids"], free))
    while eng.has_work():
        eng.step()
    assert reqs[1].output_ids == alone


def test_sampler_distribution_follows_top_k_and_temperature():
    from engine.request import Request
    from engine.sampler import sample

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    reqs = [Request(str(i), [0], SamplingParams(temperature=1.0, top_k=2)) for i in range(4000)]
    counts = torch.bincount(torch.tensor(sample(logits.clone(), reqs)), minlength=4)
    assert counts[2] == counts[3] == 0
    p = torch.tensor([2.0, 1.0]).softmax(0)[0].item()
    assert abs(counts[0].item() / 4000 - p) < 0.03
    reqs = [Request(str(i), [0], SamplingParams(temperature=1.0, top_p=0.7)) for i in range(4000)]
    counts = torch.bincount(torch.tensor(sample(logits.clone(), reqs)), minlength=4)
    assert counts[2] == counts[3] == 0  # the nucleus is the first two tokens (0.665 < 0.7)


def test_repetition_penalty_follows_hf():
    from engine.request import Request
    from engine.sampler import apply_repetition_penalty

    logits = torch.tensor([[2.0, -2.0, 1.0]])
    req = Request("r", [0, 1], SamplingParams(repetition_penalty=2.0))
    apply_repetition_penalty(logits, [req])
    assert logits.tolist() == [[1.0, -4.0, 1.0]]


def test_stops_and_lengths(model_dir):
    eng = engine(model_dir)
    ids = PROMPTS[1]["input_ids"]
    full = eng.generate([ids], greedy(12))[0]
    req = eng.add(ids, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=(full[4],)))
    texts = []
    while eng.has_work():
        texts += [o.text for o in eng.step()]
    first = full.index(full[4])
    assert req.output_ids == full[: first + 1] and req.finish_reason == "stop"
    # stop strings: the text ends before the stop, whatever tokens carried it
    whole = eng.tokenizer.decode(full, skip_special_tokens=True)
    stop = whole[3:5]
    req = eng.add(ids, SamplingParams(temperature=0, max_tokens=12, stop=(stop,)))
    text = ""
    while eng.has_work():
        text += "".join(o.text for o in eng.step())
    assert text == whole[: whole.index(stop)] and req.finish_reason == "stop"
    req = eng.add(ids, greedy(5))
    while eng.has_work():
        eng.step()
    assert req.finish_reason == "length" and len(req.output_ids) == 5


def test_without_detokenize_a_request_gives_ids_only(model_dir):
    eng = engine(model_dir)
    ids = PROMPTS[1]["input_ids"]
    full = eng.generate([ids], greedy(6))[0]
    req = eng.add(ids, SamplingParams(temperature=0, max_tokens=6, detokenize=False))
    outputs = []
    while eng.has_work():
        outputs += eng.step()
    assert req.output_ids == full and [t for o in outputs for t in o.token_ids] == full
    assert all(o.text == "" for o in outputs)
    with pytest.raises(ValueError, match="stop strings need detokenize"):
        SamplingParams(stop=("x",), detokenize=False)


def test_decode_steps_are_prepared_as_any_step_would_be(model_dir):
    eng = engine(model_dir, block_size=4)
    for p in PROMPTS:  # prompts of several lengths: tables of several widths
        eng.add(p["input_ids"], greedy(9))
    checked = 0
    while eng.has_work():
        batch = eng.scheduler.schedule()
        if all(r.output_ids and r.num_computed_tokens == r.num_tokens - 1 for r in batch.requests):
            fast = eng.runner.prepare(batch)
            slow = eng.runner._prepare_any(batch)
            for name in ("input_ids", "positions", "slots", "cu_seqlens_q", "seqused_k"):
                a, b = getattr(fast, name), getattr(slow, name)
                assert a.dtype == b.dtype and (a == b).all(), name
            assert (fast.block_tables == slow.block_tables).all()
            assert fast.sample_rows == slow.sample_rows and fast.sampling == slow.sampling
            checked += 1
        logits, sampling = eng.runner.run(batch)
        eng.scheduler.after_step(batch)
        for req, tok in zip(sampling, logits.argmax(-1).tolist(), strict=True):
            eng._append(req, tok)
    assert checked >= 8


def test_eos_ends_unless_ignored(model_dir):
    eng = engine(model_dir)
    ids = PROMPTS[0]["input_ids"]
    full = eng.generate([ids], greedy(8))[0]
    eng.eos_ids = {full[2]}  # pretend the model's third token is its end of sequence
    stopped = eng.generate([ids], SamplingParams(temperature=0, max_tokens=8))[0]
    assert stopped == full[: full.index(full[2]) + 1]
    assert eng.generate([ids], greedy(8))[0] == full  # ignore_eos


def test_bad_requests_are_refused(model_dir):
    eng = engine(model_dir)
    with pytest.raises(RequestError, match="empty"):
        eng.add([], greedy(1))
    with pytest.raises(RequestError, match="token ids"):
        eng.add([1, 10**6], greedy(1))
    with pytest.raises(RequestError, match="takes"):
        eng.add([1] * 600, greedy(1))
    with pytest.raises(RequestError, match="embeddings"):
        eng.add([1, 2, 3], greedy(1), embeds=[InjectedEmbeds(0, torch.zeros(2, 5))])
    assert not eng.has_work()


def test_abort_frees_blocks_at_once(model_dir):
    eng = engine(model_dir)
    req = eng.add(PROMPTS[3]["input_ids"], greedy(20))
    eng.step()
    eng.step()
    assert eng.blocks.num_free < eng.blocks.num_blocks
    eng.abort(req.id)
    assert eng.blocks.num_free == eng.blocks.num_blocks
    assert req.finish_reason == "abort" and not eng.has_work()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 10), st.integers(0, 2), st.integers(0, 6)),
        min_size=1,
        max_size=8,
    ),
    st.integers(8, 40),
)
def test_random_workloads_end_without_leaks(model_dir, work, num_blocks):
    eng = engine(model_dir, num_blocks=num_blocks, max_prefill_chunk=8, max_num_batched_tokens=16)
    rng = random.Random(len(work))
    live = []
    for length, n_out, priority, cancel_after in work:
        prompt = [rng.randrange(300) for _ in range(length)]
        live.append((eng.add(prompt, greedy(n_out), priority=priority), cancel_after))
    for step in range(500):
        if not eng.has_work():
            break
        eng.step()
        for req, cancel_after in live:
            if cancel_after == step:
                eng.abort(req.id)
    assert not eng.has_work()
    assert all(r.finished for r, _ in live)
    assert eng.blocks.num_free == num_blocks


def test_fork_shares_blocks_and_copies_on_write(model_dir):
    eng = engine(model_dir)
    p = PROMPTS[1]  # 18 tokens + 1 computed output: block 4 holds 3 of 4 slots
    parent = eng.add(p["input_ids"], greedy(12))
    for _ in range(2):
        eng.step()
    assert parent.num_computed_tokens % 4 == 3  # both twins' next token goes to a shared block
    used = eng.blocks.num_blocks - eng.blocks.num_free
    twist = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, repetition_penalty=3.0)
    child = eng.fork(parent.id, twist)
    assert eng.blocks.num_blocks - eng.blocks.num_free == used  # shared, not copied
    while eng.has_work():
        eng.step()
    assert eng.blocks.stats()["copies"] > 0
    # the parent never saw the child's tokens, and the child never saw the parent's
    assert agree_until_margin(parent.output_ids, p["greedy_ids"], p["greedy_top2_margins"])
    fresh = engine(model_dir)
    alone = fresh.add(p["input_ids"] + parent.output_ids[:2], twist)
    while fresh.has_work():
        fresh.step()
    assert len(child.output_ids) == 9  # max_tokens counts the inherited tokens too
    assert child.output_ids[2:] == alone.output_ids[:7]
    assert child.output_ids[2:] != parent.output_ids[2:9]
    assert eng.blocks.num_free == eng.blocks.num_blocks


def test_prompts_wait_a_few_steps_while_others_decode(model_dir):
    """With a prefill interval (set when decodes replay CUDA graphs), steps that take prompt
    tokens come at most every `prefill_interval` steps while requests decode, never when none
    decode, and greedy outputs do not change."""
    prompts = [p["input_ids"] for p in PROMPTS]
    want = [engine(model_dir).generate([p], greedy(10))[0] for p in prompts]
    eng = engine(model_dir)
    eng.scheduler.prefill_interval = 3
    first = eng.add(prompts[0], greedy(10))
    kinds = []
    eng.step()  # nothing decodes yet: the prompt goes at once
    assert first.num_computed_tokens == len(prompts[0])
    late = [eng.add(p, greedy(10)) for p in prompts[1:]]
    while eng.has_work():
        eng.step()
        kinds.append("prompt" if eng.scheduler.steps_without_prompts == 0 else "decode")
    assert kinds[:3] == ["decode", "decode", "prompt"]  # waited two short steps
    prompt_steps = [i for i, k in enumerate(kinds) if k == "prompt"]
    assert all(b - a >= 3 for a, b in zip(prompt_steps, prompt_steps[1:], strict=False))
    assert [first.output_ids, *[r.output_ids for r in late]] == want
