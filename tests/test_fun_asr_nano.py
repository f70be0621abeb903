"""Our Fun-ASR-Nano against funasr 1.4.16's FunASRNano and transformers 5's native
`fun_asr_nano` (golden fixtures, tests/fixtures/make_fun_asr_nano_golden.py): features, encoder
and adaptor outputs, prompts, logits and greedy text for both checkpoint layouts; the rollback
stream against the reference's naive re-feed loop; options, the folder loader, refusals."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.asr import AsrHandle
from engine.config import EngineConfig
from engine.engine import Engine
from engine.fun_asr_nano_asr import (
    NanoWorker,
    build_fun_asr_nano,
    build_prompt,
    clean_text,
    hotword_list,
    instruction,
    language_option,
    load_fun_asr_nano,
)
from engine.loader import find_family
from engine.models.fun_asr_nano import FunASRNanoConfig, fake_token_len
from engine.request import InjectedEmbeds
from engine.rollback import RollbackConfig
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from engine.streaming import Final, Partial, StreamOptions
from tests.qwen3_golden import agree_until_margin, prompt_logits
from tests.tiny_models import FIXTURES, paraformer_tensors_sha256, qwen3_asr_audio, tensors_sha256
from tests.tiny_models import build_fun_asr_nano as build_checkpoint

GOLDEN = FIXTURES / "fun_asr_nano"
CPU = EngineConfig(device="cpu", dtype=torch.float32, block_size=4, num_blocks=1024)
ATOL = RTOL = 2e-4


@cache
def golden(layout: str = "funasr") -> dict:
    name = "golden.json" if layout == "funasr" else "golden_hf.json"
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@cache
def tensors(layout: str = "funasr") -> dict[str, torch.Tensor]:
    return load_file(
        GOLDEN / ("golden.safetensors" if layout == "funasr" else "golden_hf.safetensors")
    )


def close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=RTOL)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("fun_asr_nano")
    build = golden()["checkpoint"]["build"]
    return {
        layout: build_checkpoint(root / layout, layout=layout, **build)
        for layout in ("funasr", "hf")
    }


@pytest.fixture(scope="module")
def built(folders):
    """Per layout: (model, tokenizer, front end, prompt format, engine, worker)."""
    out = {}
    for layout, folder in folders.items():
        model, tok, frontend, fmt = build_fun_asr_nano(folder, CPU)
        # no prefix cache: prompt_logits wants every prompt position computed
        engine = Engine(model.llm, tok, replace(CPU, enable_prefix_caching=False))
        worker = NanoWorker(model, tok, engine, RollbackConfig(), frontend)
        out[layout] = (model, tok, frontend, fmt, engine, worker)
    return out


def features(frontend, clip: str, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(qwen3_asr_audio(clip))[None] * scale
    return frontend(x, torch.tensor([x.shape[1]]))


def greedy(engine: Engine, ids: list[int], at: int, rows: torch.Tensor, n: int) -> list[int]:
    req = engine.add(
        ids, SamplingParams(temperature=0.0, max_tokens=n), embeds=[InjectedEmbeds(at, rows)]
    )
    while engine.has_work():
        engine.step()
    return list(req.output_ids)


# ---- the checkpoints are the ones the fixtures were made from --------------------------------


def test_tiny_checkpoints_are_the_fixtures_ones(folders):
    assert paraformer_tensors_sha256(folders["funasr"]) == golden()["checkpoint"]["tensors_sha256"]
    assert tensors_sha256(folders["hf"]) == golden("hf")["checkpoint"]["tensors_sha256"]
    assert find_family(folders["funasr"]).name == find_family(folders["hf"]).name == "fun_asr_nano"


def test_configs_of_both_layouts(built):
    funasr, hf = built["funasr"][0].config, built["hf"][0].config
    assert (funasr.layout, funasr.low_frame_rate, funasr.placeholder_id) == ("funasr", True, 0)
    assert (hf.layout, hf.low_frame_rate, hf.wave_scale) == ("hf", False, 1.0)
    assert hf.placeholder_id == golden("hf")["checkpoint"]["config"]["audio_token_id"]
    assert funasr.encoder == hf.encoder and funasr.text == hf.text
    assert (
        funasr.eos_token_ids
        == hf.eos_token_ids
        == (golden()["checkpoint"]["check"]["llm_eos_token_id"],)
    )
    # funasr splices fake_token_len(L) rows (about L / 8); transformers all L of them
    for case in golden()["encoder"].values():
        assert funasr.audio_tokens(case["lfr_frames"]) == case["fake_token_len"]
        assert hf.audio_tokens(case["lfr_frames"]) == case["adaptor_rows"]
    assert [fake_token_len(n) for n in (1, 8, 9, 50, 200)] == [1, 1, 2, 7, 25]


# ---- funasr layout against funasr --------------------------------------------------------------


@pytest.mark.parametrize("clip", ["hello_3s", "silence_3s", "synthetic_12s"])
def test_features_match_funasr(built, clip):
    frontend = built["funasr"][2]
    ref = golden()["features"][clip]
    feats, frames = features(frontend, clip)
    x = feats[0, : frames[0]]
    assert int(frames[0]) == ref["lfr_frames"]
    rows, frame_mean, dim_mean = (tensors()[k] for k in ref["tensors"])
    close(x[ref["rows"]], rows, 1e-5)
    close(x.double().mean(1), frame_mean, 1e-5)
    close(x.double().mean(0), dim_mean, 1e-5)


def test_encoder_and_adaptor_match_funasr_batched(built):
    """The clips of different lengths in one encoder call: each gets funasr's batch-of-one
    output, and the rows its prompt splices."""
    model, _, _, _, _, worker = built["funasr"]
    clips = list(golden()["encoder"])
    audio = [qwen3_asr_audio(c) for c in clips]
    lengths = torch.tensor([a.size for a in audio])
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in audio], batch_first=True)
    feats, frames = worker.frontend(x, lengths)
    calls = model.encoder_calls
    enc = model.encode(feats, frames)
    assert model.encoder_calls == calls + 1
    for b, clip in enumerate(clips):
        case = golden()["encoder"][clip]
        n = case["lfr_frames"]
        assert int(frames[b]) == n and enc.tokens[b] == case["fake_token_len"]
        for ours, ref in (
            (enc.encoder_out[b, :n], case["encoder_out"]),
            (enc.adaptor_out[b, :n], case["adaptor_out"]),
        ):
            assert list(ours.shape) == ref["shape"]
            assert float(ours.double().sum()) == pytest.approx(ref["sum"], rel=1e-4, abs=2e-2)
            assert float(ours.double().square().sum()) == pytest.approx(ref["sum_sq"], rel=1e-5)
        if "tensors" in case:
            close(enc.encoder_out[b, :n], tensors()[case["tensors"][0]])
            close(enc.adaptor_out[b, :n], tensors()[case["tensors"][1]])
        assert torch.equal(enc.embeds(b), enc.adaptor_out[b, : case["fake_token_len"]])
    # the worker's path (samples -> rows) gives the same rows
    for (rows, n), b in zip(worker.encode(audio), range(len(clips)), strict=True):
        assert n == int(frames[b])
        close(rows, enc.embeds(b), 1e-5)


def test_prompts_and_logits_match_funasr(built):
    model, tok, _, fmt, engine, worker = built["funasr"]
    rows, _ = worker.encode([qwen3_asr_audio("hello_3s")])[0]
    for name, case in golden()["prompts"].items():
        assert instruction(case["hotwords"], case["language"], case["itn"]) == case["instruction"]
        prompt = build_prompt(tok, 0, case["hotwords"], case["language"], case["itn"], fmt)
        assert prompt.audio_start() == case["audio_start"], name
        assert prompt.ids(tok, case["audio_tokens"]) == case["input_ids"], name
        logits = prompt_logits(
            engine, case["input_ids"], [InjectedEmbeds(case["audio_start"], rows)]
        )
        close(logits[case["logits_start"] :], tensors()[case["logits"]])


def test_greedy_matches_funasr(built):
    _, tok, _, _, engine, worker = built["funasr"]
    for key, case in golden()["greedy"].items():
        rows, _ = worker.encode([qwen3_asr_audio(case["audio"])])[0]
        ids = greedy(
            engine, case["input_ids"], case["audio_start"], rows, golden()["max_new_tokens"]
        )
        assert agree_until_margin(ids, case["generated_ids"], case["top2_margins"]), key
        assert ids == case["generated_ids"], key  # every margin of the fixtures is >= 0.029
        raw = tok.decode(ids, skip_special_tokens=True)
        assert raw == case["raw_text"] and clean_text(raw) == case["text"], key


def test_tokenizer_matches_the_references(built):
    tok = built["funasr"][1]
    for case in golden()["tokenizer"]["encodings"]:
        assert tok.encode(case["text"]) == case["ids"]
        assert tok.decode(case["ids"]) == case["decoded"]


# ---- hf layout against transformers 5 ----------------------------------------------------------


def test_hf_layout_matches_transformers(built):
    model, tok, frontend, fmt, engine, worker = built["hf"]
    ref, t = golden("hf"), tensors("hf")
    feats, frames = features(frontend, "hello_3s", model.config.wave_scale / 32768.0)
    assert int(frames[0]) == ref["features"]["lfr_frames"]
    close(feats[0].double().mean(1), t["features/frame_mean"], 1e-4)
    enc = model.encode(feats, frames)
    close(enc.encoder_out[0], t["encoder_out"])
    close(enc.adaptor_out[0], t["adaptor_out"])
    rows, _ = worker.encode([qwen3_asr_audio("hello_3s")])[0]
    assert rows.shape[0] == ref["encoder"]["audio_rows"]  # all L rows, not fake_token_len(L)
    for name, case in ref["prompts"].items():
        p = golden()["prompts"][name]
        prompt = build_prompt(
            tok, model.config.placeholder_id, p["hotwords"], p["language"], p["itn"], fmt
        )
        assert prompt.ids(tok, case["audio_tokens"]) == case["input_ids"], name
        at = case["audio_start"]
        logits = prompt_logits(engine, case["input_ids"], [InjectedEmbeds(at, rows)])
        close(logits[case["logits_start"] :], t[case["logits"]])
        ids = greedy(engine, case["input_ids"], at, rows, len(case["generated_ids"]))
        assert ids == case["generated_ids"], name  # the smallest margin here is 0.019
        assert tok.decode(ids, skip_special_tokens=True) == case["text"]


def test_hf_weights_are_the_funasr_ones(built):
    a, b = built["funasr"][0].state_dict(), built["hf"][0].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- streaming: the rollback policy against the reference's re-feed loop ------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["plain", "english_hotwords"])
async def test_streaming_equals_the_reference_refeed_loop(folders, case):
    ref = golden()["streams"][case]
    steps, cfg = ref["steps"], golden()["streaming"]
    hotwords, language, _ = (golden()["prompts"][case][k] for k in ("hotwords", "language", "itn"))
    runtime = Runtime()
    served = load_fun_asr_nano(
        folders["funasr"],
        "nano",
        runtime=runtime,
        rollback=RollbackConfig(
            cfg["step_seconds"], cfg["unfixed_chunks"], cfg["unfixed_tokens"], cfg["max_new_tokens"]
        ),
        **{k: getattr(CPU, k) for k in ("device", "dtype", "block_size", "num_blocks")},
    )
    served.worker.trace = trace = []
    audio = qwen3_asr_audio(cfg["audio"])
    code = {"英文": "en", None: None}[language]
    handle = served.open_stream(StreamOptions(code, ", ".join(hotwords) or None))
    events, fed, got = aiter(handle), 0, []
    try:
        for step in steps:
            handle.feed(audio[fed : step["audio_samples"]])
            fed = step["audio_samples"]
            if step["finish"]:
                handle.commit()
            got.append(await asyncio.wait_for(anext(events), 30))
    finally:
        runtime.shutdown()
    assert [type(e) for e in got] == [Final if s["finish"] else Partial for s in steps]
    for ours, step in zip(trace, steps, strict=True):
        assert (ours.upto, ours.final, ours.prefix) == (
            step["audio_samples"],
            step["finish"],
            step["prefix"],
        )
        assert ours.prompt_ids == step["prompt_ids"]
        assert agree_until_margin(ours.generated_ids, step["generated_ids"], step["top2_margins"])
        assert ours.generated_ids == step["generated_ids"]  # margins >= 0.033
        assert ours.raw == step["raw"]
    for event, step in zip(got[:-1], steps, strict=False):
        assert event.stable + event.unstable == step["text"].strip()
        assert event.end_sample == step["audio_samples"]
    stables = [e.stable for e in got[:-1]]
    assert all(b.startswith(a) for a, b in zip(stables, stables[1:], strict=False)) and stables[-1]
    assert got[-1].text == steps[-1]["text"].strip() and got[-1].language == code


@pytest.mark.anyio
async def test_streams_due_together_share_one_encoder_call(built):
    """Two streams with their own options stepped in one turn: one encoder call, and each
    final is what the same audio gives alone."""
    model, tok, _, fmt, engine, _ = built["funasr"]
    worker = NanoWorker(model, tok, engine, RollbackConfig(max_new_tokens=16), built["funasr"][2])
    plan = [("hello_3s", "plain"), ("hello_3s", "english_hotwords")]
    handles = []
    for clip, name in plan:
        p = golden()["prompts"][name]
        prompt = build_prompt(tok, 0, p["hotwords"], p["language"], p["itn"], fmt)
        h = AsrHandle(worker, {"forced": "en" if p["language"] else None, "prompt": prompt})
        h.feed(qwen3_asr_audio(clip)[:16000])
        h.commit()
        handles.append(h)
    worker.take_inbox()
    calls = model.encoder_calls
    while worker.has_work():
        worker.step()
    assert model.encoder_calls == calls + 1
    for h, (clip, name) in zip(handles, plan, strict=True):
        final = await asyncio.wait_for(anext(aiter(h)), 5)
        p = golden()["prompts"][name]
        prompt = build_prompt(tok, 0, p["hotwords"], p["language"], p["itn"], fmt)
        rows, _ = worker.encode([qwen3_asr_audio(clip)[:16000]])[0]
        alone = greedy(engine, prompt.ids(tok, rows.shape[0]), prompt.audio_start(), rows, 16)
        assert final.text == clean_text(tok.decode(alone, skip_special_tokens=True)).strip()


# ---- options, folders, refusals ----------------------------------------------------------------


def test_options():
    assert (
        language_option("en")
        == language_option("English")
        == language_option("英文")
        == ("en", "英文")
    )
    assert language_option(" ZH ") == ("zh", "中文") and language_option("Japanese") == (
        "ja",
        "日文",
    )
    for bad in ("xx", "Klingon", ""):
        with pytest.raises(ValueError):
            language_option(bad)
    assert hotword_list("阿里巴巴, 通义实验室；rtserve\n 、Qwen") == [
        "阿里巴巴",
        "通义实验室",
        "rtserve",
        "Qwen",
    ]
    assert hotword_list(None) == hotword_list(" , ") == []
    assert clean_text("a/sil b \n\t c") == "a b c"


@pytest.mark.anyio
async def test_served_options_and_validation(folders):
    runtime = Runtime()
    served = load_fun_asr_nano(
        folders["funasr"], "nano", runtime=runtime, language="zh", use_itn=False, device="cpu"
    )
    try:
        served.validate(StreamOptions("en", "hotword"))
        with pytest.raises(ValueError):
            served.validate(StreamOptions("xx"))
        code, prompt = served.stream_prompt(StreamOptions())
        tok = served.worker.tokenizer
        assert code == "zh" and tok.decode(prompt.head).endswith(instruction([], "中文", False))
        code, prompt = served.stream_prompt(StreamOptions("ja", "a, b", use_itn=True))
        assert code == "ja" and tok.decode(prompt.head).endswith(
            instruction(["a", "b"], "日文", True)
        )
        assert "en" in served.languages and served.kind == "asr"
    finally:
        runtime.shutdown()


def test_folder_refusals(folders, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders["funasr"], bad)
    shutil.rmtree(bad / "Qwen3-0.6B")
    with pytest.raises(FileNotFoundError, match="LLM folder"):
        build_fun_asr_nano(bad, CPU)
    config = golden()["checkpoint"]["config"]
    llm = json.loads((folders["funasr"] / "Qwen3-0.6B" / "config.json").read_text())
    for key, value in (
        ("audio_adaptor", "Linear"),
        ("llm_conf", {"use_lora": True}),
        ("model", "X"),
    ):
        with pytest.raises(ValueError):
            FunASRNanoConfig.from_funasr({**config, key: value}, llm)
    model = build_fun_asr_nano(folders["funasr"], CPU)[0]
    state = {f"llm.{k}": v for k, v in model.llm.state_dict().items()}
    state |= {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    del state["audio_adaptor.linear1.bias"]
    with pytest.raises(ValueError, match="missing"):
        model.load_weights(state)
    state["audio_adaptor.linear1.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        model.load_weights(state)
    assert np.isfinite(model.audio_adaptor.linear1.weight.detach().numpy()).all()


@pytest.mark.anyio
async def test_a_segment_too_short_for_the_front_end_is_empty(built):
    """One sample (funasr's front end fails on it) gives an empty final, and the stream
    stepped beside it is not failed."""
    model, tok, frontend, fmt, engine, _ = built["funasr"]
    worker = NanoWorker(model, tok, engine, RollbackConfig(max_new_tokens=4), frontend)
    prompt = build_prompt(tok, 0, fmt=fmt)
    short, other = (AsrHandle(worker, {"forced": None, "prompt": prompt}) for _ in range(2))
    short.feed(np.ones(1, np.float32))
    other.feed(qwen3_asr_audio("hello_3s")[:8000])
    for h in (short, other):
        h.commit()
    worker.take_inbox()
    while worker.has_work():
        worker.step()
    assert await asyncio.wait_for(anext(aiter(short)), 5) == Final(0, "", None)
    final = await asyncio.wait_for(anext(aiter(other)), 5)
    assert isinstance(final, Final) and final.text
