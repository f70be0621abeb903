"""The engine behind asyncio: streams of outputs, cancellation, and loading by family."""

from __future__ import annotations

import asyncio

import pytest

from engine.async_engine import AsyncEngine
from engine.engine import RequestError
from engine.loader import ModelSpec, load
from tests.qwen3_golden import agree_until_margin, checkpoint, engine, golden, greedy

pytestmark = pytest.mark.anyio
PROMPTS = golden()["checkpoints"]["untied"]["prompts"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return checkpoint("untied", tmp_path_factory.mktemp("qwen3"))


@pytest.fixture
def async_engine(model_dir):
    eng = AsyncEngine(engine(model_dir))
    yield eng
    eng.shutdown()


async def collect(eng: AsyncEngine, ids, params):
    return [out async for out in eng.generate(ids, params)]


async def test_concurrent_streams_match_the_reference(async_engine):
    results = await asyncio.gather(
        *(collect(async_engine, p["input_ids"], greedy(12)) for p in PROMPTS)
    )
    for outs, p in zip(results, PROMPTS, strict=True):
        ids = [t for o in outs for t in o.token_ids]
        assert agree_until_margin(ids, p["greedy_ids"], p["greedy_top2_margins"])
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert all(not o.finished for o in outs[:-1])
        assert outs[-1].num_prompt_tokens == len(p["input_ids"])
        text = "".join(o.text for o in outs)
        assert text == async_engine.engine.tokenizer.decode(ids, skip_special_tokens=True)


async def test_leaving_a_stream_frees_its_blocks(async_engine):
    blocks = async_engine.engine.blocks
    stream = async_engine.generate(PROMPTS[3]["input_ids"], greedy(200))
    first = await stream.__anext__()
    assert not first.finished and blocks.num_free < blocks.num_blocks
    await stream.aclose()
    for _ in range(100):
        if blocks.num_free == blocks.num_blocks and not async_engine.engine.has_work():
            break
        await asyncio.sleep(0.01)
    assert blocks.num_free == blocks.num_blocks
    assert not async_engine.engine.has_work()


async def test_a_bad_request_fails_alone(async_engine):
    good = asyncio.create_task(collect(async_engine, PROMPTS[0]["input_ids"], greedy(5)))
    with pytest.raises(RequestError):
        await collect(async_engine, [], greedy(5))
    assert len(await good) == 5


def test_loader_picks_the_qwen3_family(model_dir):
    model = load(ModelSpec(str(model_dir), "tiny-chat"))
    try:
        assert model.kind == "chat" and model.name == "tiny-chat"
        assert model.tokenizer.eos_token_ids
    finally:
        model.engine.shutdown()
