"""Our FireRedASR2-LLM against the official fireredasr2 code (golden fixtures from
tests/fixtures/make_fireredasr2_golden.py, its float32 LLM): the adapter's output, the decode
prompt with the speech spliced in, the Qwen2 logits through the paged engine (LoRA merged at
load), greedy decoding and the package's default 3-beam search (Hugging Face's) with forked
requests sharing KV blocks; the folder loads as the fireredasr2 family and serves on the
segment policy."""

from __future__ import annotations

import asyncio
import json
from functools import cache

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audio.kaldi_cmvn import FireRedFrontend
from engine.config import EngineConfig
from engine.engine import Engine
from engine.llm_beam_search import Prompt, beam_search
from engine.loader import ModelSpec, find_family, load
from engine.models.fireredasr2_llm import build_fireredasr2_llm, merge_lora, prompt_ids
from engine.request import InjectedEmbeds
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from engine.streaming import Final, StreamOptions
from kernels.attention import backend
from tests.qwen3_golden import prompt_logits
from tests.tiny_models import (
    FIXTURES,
    build_fireredasr2,
    fireredasr2_audio,
    fireredasr2_tensors_sha256,
)

GOLDEN = FIXTURES / "fireredasr2"
CPU = EngineConfig(device="cpu", dtype=torch.float32, block_size=4, num_blocks=256)


@cache
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())["llm"]


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


def case(clip: str) -> dict:
    return golden()["clips"][clip]


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = 2e-4) -> None:
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=2e-4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_fireredasr2(tmp_path_factory.mktemp("firered_llm") / "tiny", **golden()["build"])


@pytest.fixture(scope="module")
def built(folder):
    model, tokenizer = build_fireredasr2_llm(folder, backend("sdpa", "cpu"))
    return model, tokenizer, FireRedFrontend.from_file(folder / "cmvn.ark")


def speech(built, clip: str) -> torch.Tensor:
    model, _, frontend = built
    x = torch.from_numpy(fireredasr2_audio(clip).astype(np.float32) / 32768)
    with torch.inference_mode():
        out, lengths = model.speech(*frontend(x[None]))
    assert int(lengths[0]) == out.shape[1]
    return out[0]


def test_checkpoint_is_the_fixtures(folder):
    assert fireredasr2_tensors_sha256(folder) == golden()["tensors_sha256"]


@pytest.mark.parametrize("clip", ["hello", "tone_short", "weather"])
def test_adapter_prompt_and_logits(built, clip):
    model, tokenizer, _ = built
    c = case(clip)
    s = speech(built, clip)
    assert s.shape[0] == c["speech_tokens"]
    close(s, tensors()[f"llm/{clip}/adapter_out"])
    ids, at = prompt_ids(tokenizer, s.shape[0])
    ref = c["input_ids"]
    speech_id = golden()["speech_token_id"]
    assert ids == ref[: c["speech_at"]] + [speech_id] * s.shape[0] + ref[c["speech_at"] + 1 :]
    assert at == c["speech_at"]
    logits = prompt_logits(Engine(model.decoder, tokenizer, CPU), ids, [InjectedEmbeds(at, s)])
    close(logits[-1], tensors()[f"llm/{clip}/last_logits"])
    if f"llm/{clip}/logits" in tensors():
        close(logits, tensors()[f"llm/{clip}/logits"])
    assert logits.argmax(-1).tolist() == c["argmax"]
    assert float(logits.double().sum()) == pytest.approx(c["logits"]["sum"], rel=1e-4)


def test_lora_is_merged(folder, built):
    """Without the merge the logits differ: the fixtures see the LoRA."""
    model, tokenizer, _ = built
    s = speech(built, "tone_short")
    ids, at = prompt_ids(tokenizer, s.shape[0])
    plain, _ = build_fireredasr2_llm(folder, backend("sdpa", "cpu"))
    doc = torch.load(folder / "model.pth.tar", weights_only=False)
    lora = {k: v for k, v in doc["model_state_dict"].items() if ".lora_" in k}
    merged = {k: v.clone() for k, v in plain.decoder.state_dict().items()}
    assert merge_lora(merged, lora) == len(lora) // 2
    a_key = next(iter(lora))
    base = a_key.replace(".lora_A.default.weight", ".weight").removeprefix("llm.base_model.model.")
    delta = lora[a_key.replace(".lora_A.", ".lora_B.")] @ lora[a_key] * 0.25
    close(merged[base] - plain.decoder.state_dict()[base], delta, 1e-6)
    unmerged = {k: v.clone() for k, v in plain.decoder.state_dict().items()}
    for k in unmerged:  # undo the loader's merge
        unmerged[k] = 2 * unmerged[k] - merged[k]
    plain.decoder.load_weights(unmerged)
    logits = prompt_logits(Engine(plain.decoder, tokenizer, CPU), ids, [InjectedEmbeds(at, s)])
    assert not torch.allclose(logits[-1], tensors()["llm/tone_short/last_logits"], atol=1e-2)


@pytest.mark.parametrize("clip", ["hello", "tone_short", "weather"])
def test_greedy_decoding_matches(built, clip):
    model, tokenizer, _ = built
    s = speech(built, clip)
    ids, at = prompt_ids(tokenizer, s.shape[0])
    eos = tokenizer.token_to_id("<|im_end|>")
    params = SamplingParams(
        temperature=0.0, max_tokens=s.shape[0], stop_token_ids=(eos,), ignore_eos=True
    )
    engine = Engine(model.decoder, tokenizer, CPU)
    req = engine.add(ids, params, embeds=[InjectedEmbeds(at, s)])
    while engine.has_work():
        engine.step()
    assert req.output_ids == case(clip)["greedy_ids"]


def test_beam_search_matches_and_beams_share_blocks(built):
    """Three searches in one engine (and each alone): the package's beam-3 ids; while they
    run, the beams of a prompt hold its blocks once (forks share them by reference)."""
    model, tokenizer, _ = built
    clips = ["hello", "tone_short", "weather"]
    prompts = []
    for clip in clips:
        s = speech(built, clip)
        ids, at = prompt_ids(tokenizer, s.shape[0])
        prompts.append(Prompt(ids, [InjectedEmbeds(at, s)], s.shape[0]))
    eos = tokenizer.token_to_id("<|im_end|>")
    engine = Engine(model.decoder, tokenizer, CPU)
    usage = []
    after_step = engine.scheduler.after_step

    def record(batch) -> None:
        after_step(batch)
        tables = [r.block_table for r in engine.scheduler.running]
        usage.append((len(tables), sum(map(len, tables)), len({b for t in tables for b in t})))

    engine.scheduler.after_step = record
    got = beam_search(engine, prompts, 3, eos)
    assert got == [case(c)["beam3_ids"] for c in clips]
    assert max(n for n, _, _ in usage) == 9  # three beams for each of the three prompts
    assert any(distinct < total for _, total, distinct in usage)
    assert not engine.requests and not engine.scheduler.running  # every beam ended
    alone = beam_search(engine, prompts[1:2], 3, eos)
    assert alone == [case("tone_short")["beam3_ids"]]
    assert case("hello")["beam3_ids"][-1] == eos  # one search ended by <|im_end|>
    assert len(case("weather")["beam3_ids"]) == case("weather")["speech_tokens"]  # one by length


@pytest.mark.parametrize("beam_size", [3, 1])
def test_served_on_the_segment_policy(folder, beam_size):
    assert find_family(folder).name == "fireredasr2"
    runtime = Runtime()
    model = load(
        ModelSpec(str(folder), "tiny-llm"), runtime=runtime, device="cpu", beam_size=beam_size
    )
    assert model.kind == "asr" and model.max_segment_seconds == 30.0
    tokenizer = model.worker.tokenizer
    clips = ["hello", "tone_short"]

    async def transcribe() -> list[Final]:
        handles = []
        for clip in clips:
            h = model.open_stream(StreamOptions())
            h.feed(fireredasr2_audio(clip).astype(np.float32) / 32768)
            h.commit()
            handles.append(h)
        return [await asyncio.wait_for(anext(aiter(h)), 60) for h in handles]

    try:
        finals = asyncio.run(transcribe())
    finally:
        runtime.shutdown()
    for final, clip in zip(finals, clips, strict=True):
        if beam_size == 3:
            want = case(clip)["beam3_text"]  # transcribe()'s text, decoded by transformers
        else:
            want = tokenizer.decode(case(clip)["greedy_ids"], skip_special_tokens=True).lower()
        assert isinstance(final, Final) and final.text == want
