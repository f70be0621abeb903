"""The chat APIs through the official SDKs, against the engine's own greedy results."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai
import pytest

from engine.chat import load_qwen3
from engine.sampling import SamplingParams
from tests.qwen3_golden import checkpoint, engine
from tests.server import make_server, running
from tests.tone_asr import ToneAsr

KEY = "sk-chat"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    return {"tiny-a": checkpoint("untied", root), "tiny-b": checkpoint("tied", root)}


@pytest.fixture(scope="module")
def served(dirs):
    models = [load_qwen3(path, name) for name, path in dirs.items()]
    server = make_server([ToneAsr(), *models], api_key=KEY)
    with running(server) as url:
        yield server, url
    for m in models:
        m.engine.shutdown()


@pytest.fixture(scope="module")
def oai(served):
    return openai.OpenAI(api_key=KEY, base_url=f"http://{served[1]}/v1", max_retries=0)


@pytest.fixture(scope="module")
def claude(served):
    return anthropic.Anthropic(api_key=KEY, base_url=f"http://{served[1]}", max_retries=0)


def reference(path, messages, n: int, **template_kwargs) -> tuple[str, list[int], str]:
    """The engine's own greedy text, its prompt ids, and its finish reason."""
    eng = engine(path)
    text = eng.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, **template_kwargs
    )
    ids = eng.tokenizer.encode(text)
    req = eng.add(ids, SamplingParams(temperature=0, max_tokens=n))
    out = ""
    while eng.has_work():
        out += "".join(o.text for o in eng.step())
    return out, ids, req.finish_reason


def test_models_are_listed_with_their_kinds(served, oai):
    kinds = {m.id: m.kind for m in oai.models.list().data}
    assert kinds == {"tone-asr": "asr", "tiny-a": "chat", "tiny-b": "chat"}


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_chat_completion_equals_engine_greedy(dirs, oai, name):
    want, ids, finish = reference(dirs[name], MESSAGES, 12)
    r = oai.chat.completions.create(model=name, messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(ids)
    assert r.object == "chat.completion" and r.model == name


def test_chat_completion_streaming(dirs, oai):
    want, ids, finish = reference(dirs["tiny-a"], MESSAGES, 12)
    stream = oai.chat.completions.create(
        model="tiny-a",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].usage.prompt_tokens == len(ids) and not chunks[-1].choices


def test_completions_plain_and_streaming(dirs, oai):
    eng = engine(dirs["tiny-a"])
    prompt = "The weather today is"
    [ids] = eng.generate(
        [eng.tokenizer.encode(prompt)], SamplingParams(temperature=0, max_tokens=8)
    )
    want = eng.tokenizer.decode(ids, skip_special_tokens=True)
    r = oai.completions.create(model="tiny-a", prompt=prompt, max_tokens=8, temperature=0)
    assert r.choices[0].text == want and r.object == "text_completion"
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(
            model="tiny-a", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_cached_prompt_tokens_are_reported(oai):
    long = [{"role": "user", "content": "Tell me about the sea and the sky. " * 6}]
    first = oai.chat.completions.create(model="tiny-a", messages=long, max_tokens=2, temperature=0)
    second = oai.chat.completions.create(model="tiny-a", messages=long, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 16 and cached % 16 == 0


def test_stop_and_seed(dirs, oai):
    want, _, _ = reference(dirs["tiny-a"], MESSAGES, 12)
    stop = want[4:6]
    r = oai.chat.completions.create(
        model="tiny-a", messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop]
    )
    assert r.choices[0].message.content == want[: want.index(stop)]
    assert r.choices[0].finish_reason == "stop"

    def sample(seed):
        return (
            oai.chat.completions.create(
                model="tiny-a", messages=MESSAGES, max_tokens=10, temperature=1.0, seed=seed
            )
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)


def test_openai_errors(served, oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="nope", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="n=1"):
        oai.chat.completions.create(model="tiny-a", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "word " * 600}]
        )
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="tiny-a", messages=[])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oai.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=oai.base_url, max_retries=0).models.list()
    url = served[1]
    r = httpx.post(
        f"http://{url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_cancelling_a_stream_frees_the_engine(served):
    server, url = served
    model = server.models["tiny-b"]
    client = openai.OpenAI(api_key=KEY, base_url=f"http://{url}/v1", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny-b",
        messages=MESSAGES,
        max_tokens=400,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    eng = model.engine.engine
    deadline = time.monotonic() + 10
    while (
        eng.has_work() or eng.blocks.num_free != eng.blocks.num_blocks
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not eng.has_work() and eng.blocks.num_free == eng.blocks.num_blocks


def test_anthropic_messages(dirs, claude):
    want, ids, finish = reference(dirs["tiny-a"], MESSAGES, 12)
    r = claude.messages.create(
        model="tiny-a",
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        extra_body={"temperature": 0},  # the SDK no longer sends it; older clients do
    )
    assert r.content[0].text == want
    assert r.stop_reason == ("max_tokens" if finish == "length" else "end_turn")
    assert r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) == len(ids)
    with claude.messages.stream(
        model="tiny-a",
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
        max_tokens=12,
        extra_body={"temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == want and final.content[0].text == want
    count = claude.messages.count_tokens(
        model="tiny-a",
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
    )
    assert count.input_tokens == len(ids)


def test_anthropic_stop_sequences_and_errors(dirs, claude):
    want, _, _ = reference(dirs["tiny-a"], MESSAGES, 12)
    stop = want[4:6]
    r = claude.messages.create(
        model="tiny-a",
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        extra_body={"temperature": 0},
        stop_sequences=[stop],
    )
    assert r.content[0].text == want[: want.index(stop)]
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", messages=MESSAGES[1:], max_tokens=5)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model="tiny-a", messages=[{"role": "robot", "content": "x"}], max_tokens=5
        )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            api_key="wrong", base_url=str(claude.base_url), max_retries=0
        ).messages.create(model="tiny-a", messages=MESSAGES[1:], max_tokens=5)


@pytest.mark.anyio
async def test_concurrent_requests_share_the_engine(dirs, served):
    want, _, _ = reference(dirs["tiny-b"], MESSAGES, 12)
    client = openai.AsyncOpenAI(api_key=KEY, base_url=f"http://{served[1]}/v1", max_retries=0)
    results = await asyncio.gather(
        *(
            client.chat.completions.create(
                model="tiny-b", messages=MESSAGES, max_tokens=12, temperature=0
            )
            for _ in range(6)
        )
    )
    assert all(r.choices[0].message.content == want for r in results)
