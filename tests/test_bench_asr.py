"""`rtserve bench asr` on the tiny shape, on the CPU: the workloads run and measure what they say,
the checkpoint writer's folder loads, and the qwen-asr baseline decodes what we decode."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from engine.asr import build_qwen3_asr
from engine.bench import asr, live, synthetic
from engine.config import EngineConfig
from engine.loader import find_family
from rtserve.cli import parser

BASELINE_GOLDEN = Path(__file__).parent / "fixtures" / "bench_asr_baseline.json"
TINY = dict(shape="tiny", device="cpu", dtype="float32", seed=0)


def bench(**overrides) -> asr.AsrBench:
    return asr.AsrBench(**(TINY | overrides))


@pytest.fixture(scope="module")
def system():
    s = asr.load_system(bench())
    yield s
    s.close()


@pytest.fixture(scope="module")
def signal():
    return synthetic.speech_like(40.0, seed=0)


@pytest.fixture(scope="module")
def stepped(system, signal):
    """The steps workload over a 30 s segment: (summary, what the baseline re-runs)."""
    b = bench(segment_seconds=30.0, positions=(10.0, 20.0, 30.0))
    return asyncio.run(asr.steps(system, b, signal))


def test_output_lengths_follow_a_transcript_of_the_token_rate():
    lengths = asr.OutputLengths(rate=4.0, header=4)
    assert lengths.step(2.0, 0) == 4 + 8  # no prefix yet: header and text
    assert lengths.step(4.0, 0) == 4 + 16
    assert lengths.step(6.0, lengths.transcript(4.0) - 5) == 5 + 8  # rollback and 2 s of text
    assert lengths.step(20.0, 0) == 84


def test_steps_work_is_flat_apart_from_the_text_prefix(stepped):
    summary, _ = stepped
    at = summary["at"]
    assert list(at) == ["10", "20", "30"]
    rows = summary["all"]
    assert [r["generated_tokens"] for r in rows[:3]] == [12, 20, 13]
    assert {r["generated_tokens"] for r in rows[2:]} == {13}
    late = [r for r in rows if r["at_s"] >= 10]
    # the open window and at most one just-completed window: 2 x 104 audio tokens
    assert max(r["encoder_tokens"] for r in late) <= 208
    # what a step computes, beyond its text prefix, does not grow with the position
    beyond_prefix = [r["prefill_tokens"] - r["prefix_tokens"] for r in late]
    assert max(beyond_prefix) <= 208 + 24, beyond_prefix
    assert at["30"]["prompt_tokens"] > at["10"]["prompt_tokens"] + 200  # while the prompt grows
    assert at["30"]["prefill_tokens"] < at["30"]["prompt_tokens"] / 2
    assert all(r["step_ms"] > 0 for r in rows)


def test_capacity_two_streams_yields_latencies(system, signal):
    row = asyncio.run(live.capacity(system, bench(duration=3.0, drain_seconds=10.0), signal, 2))
    assert row["streams"] == 2 and row["partials"] >= 1 and row["merged_steps"] == 0
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] < 10_000
    assert row["failed_segments"] == 0 and 2.0 <= row["max_backlog_s"] < 3.0
    assert row["end_backlog_s"] < 2.0  # every step due by the end was answered
    assert live.max_streams_under([row], target_ms=1e9) == 2


def test_mixed_measures_asr_alone_and_under_chat_load(system, signal):
    """Two live streams alone, then beside four tiny chat requests on the same runtime thread:
    both runs have latencies, the chat kept generating (and resubmitting) during the loaded
    run, and the chat engine left the runtime and freed its requests afterwards."""
    b = bench(duration=3.0, mixed_streams=2, chat_shape="qwen3-tiny", chat_streams=4)
    b.chat_prompt_len, b.chat_output_len = 32, 8  # short requests: several finish and restart
    m = asyncio.run(live.mixed(system, b, signal))
    assert m["streams"] == 2
    for run in (m["alone"], m["loaded"]):
        assert run["streams"] == 2 and run["partials"] >= 2 and run["failed_segments"] == 0
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] < 10_000
    assert m["p95_ratio"] == pytest.approx(m["loaded"]["p95_ms"] / m["alone"]["p95_ms"])
    assert m["within_target"] == (m["p95_ratio"] <= 1.5)
    chat = m["chat"]
    assert chat["shape"] == "qwen3-tiny" and chat["streams"] == 4
    assert chat["num_blocks"] == 4 * (-(-(40 + 10) // 16) + 1)  # sized from the workload
    assert chat["finished_requests"] > 4 and chat["output_tokens"] > 4 * 8
    assert chat["output_tok_s"] == pytest.approx(chat["output_tokens"] / chat["seconds"])
    assert system.runtime._workers == [system.worker]  # the chat engine is gone
    rows = asr.rows({"mixed": m})
    assert [r["workload"] for r in rows] == ["mixed alone", "mixed +chat"]
    assert rows[1]["p95_x_alone"] == m["p95_ratio"] and rows[1]["chat_tok_s"] > 0


def test_offline_four_clips_in_three_passes(system, signal):
    b = bench(concurrency=4, clip_seconds=5.0, offline_repeats=3)
    row = asyncio.run(asr.offline(system, b, signal, asr.clip_offsets(b, signal)))
    assert row["concurrency"] == 4 and row["output_tokens_per_clip"] == 4 + 20
    runs = row["runs_audio_s_per_s"]
    assert len(runs) == 3 and all(r > 0 for r in runs)
    assert row["audio_s_per_s"] == sorted(runs)[1]  # the median pass
    assert row["audio_s_per_s"] == pytest.approx(4 * 5.0 / row["seconds"])


def test_the_checkpoint_writer_makes_a_folder_our_loader_loads(system, tmp_path):
    folder = synthetic.save_checkpoint(system.worker.model, system.config, tmp_path / "ckpt")
    assert find_family(folder).name == "qwen3_asr"
    model, tokenizer = build_qwen3_asr(folder, EngineConfig(device="cpu", dtype=torch.float32))
    ours = dict(system.worker.model.named_parameters())
    loaded = dict(model.named_parameters())
    assert ours.keys() == loaded.keys()
    assert all(torch.equal(ours[k], loaded[k]) for k in ours)
    text = "language English<asr_text>hello, wörld"
    assert tokenizer.encode(text) == system.worker.tokenizer.encode(text)
    assert tokenizer.token_to_id("<|audio_pad|>") == model.config.audio_token_id
    assert set(tokenizer.eos_token_ids) >= {synthetic.token_ids()["<|im_end|>"]}


def run_the_baseline(system, signal, stepped, tmp_path) -> dict:
    """qwen-asr (in the reference environment) re-running our first step and our step at 10 s;
    tests/fixtures/make_bench_asr_golden.py stores what it returns."""
    _, rerun = stepped
    b = bench(concurrency=2, clip_seconds=3.0, baseline_repeats=1)
    offline = {
        "concurrency": 2,
        "clip_samples": 3 * live.SAMPLE_RATE,
        "offsets": asr.clip_offsets(b, signal),
        "new_tokens": b.lengths.transcript(3.0),
    }
    checkpoint = system.checkpoint(tmp_path)
    plan = {"steps": rerun[:2], "offline": offline}
    return asr.run_baseline(b, checkpoint, signal, plan, tmp_path)


def test_the_qwen_asr_baseline_decodes_our_first_step(stepped):
    summary, _ = stepped
    result = json.loads(BASELINE_GOLDEN.read_text())
    first, at10 = result["steps"]
    assert first["ids"] == summary["first_step_ids"]  # float32, CPU: the same tokens
    assert first["generated_tokens"] == 12 and at10["generated_tokens"] == 13
    assert at10["audio_tokens"] == summary["at"]["10"]["audio_tokens"]
    assert at10["prompt_tokens"] == summary["at"]["10"]["prompt_tokens"]
    assert result["offline"]["output_tokens_per_clip"] == 4 + 12


def test_cli_parses_bench_asr():
    a = parser().parse_args(
        ["bench", "asr", "--shape", "tiny", "--workloads", "steps,wire", "--streams", "2,4"]
    )
    assert a.workload == "asr" and a.workloads == ("steps", "wire") and a.streams == (2, 4)
    mixed = ["--workloads", "mixed", "--chat-shape", "qwen3-tiny", "--chat-streams", "8"]
    m = parser().parse_args(["bench", "asr", *mixed])
    assert m.workloads == ("mixed",) and m.chat_shape == "qwen3-tiny" and m.chat_streams == 8
    assert (m.mixed_streams, m.chat_prompt_len, m.chat_output_len) == (64, 512, 256)
    default = parser().parse_args(["bench", "asr"])
    assert default.workloads == asr.DEFAULT_WORKLOADS and default.shape == "qwen3-asr-0.6b"


def test_the_wire_server_gets_the_runs_engine_settings():
    b = asr.AsrBench(
        attention_backend="triton-paged", cuda_graphs=False, encoder_graphs=True,
        prompt_graphs=True, prefill_interval=8, max_num_seqs=512,
    )  # fmt: skip
    a = parser().parse_args(["bench", "asr", "--serve", *asr.engine_flags(b)])
    assert (a.attention_backend, a.cuda_graphs, a.prefill_interval) == ("triton-paged", False, 8)
    assert a.max_num_seqs == 512
    assert a.encoder_graphs and a.prompt_graphs
    plain = parser().parse_args(["bench", "asr", "--serve", *asr.engine_flags(asr.AsrBench())])
    assert plain.cuda_graphs and plain.encoder_graphs and plain.prompt_graphs
    assert plain.attention_backend is None
    eager = asr.AsrBench(encoder_graphs=False, prompt_graphs=False)
    e = parser().parse_args(["bench", "asr", "--serve", *asr.engine_flags(eager)])
    assert not (e.encoder_graphs or e.prompt_graphs)


def test_cli_parses_kernel_cases():
    a = parser().parse_args(["bench", "kernels", "--prefill-cases", "1x192,16x256"])
    assert a.prefill_cases == ((1, 192), (16, 256)) and a.decode_cases is None
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "kernels", "--decode-cases", "8:4096"])


# ---- Fun-ASR-Nano ----


@pytest.fixture(scope="module")
def nano_system(tmp_path_factory):
    from tests.tiny_models import build_fun_asr_nano

    folder = build_fun_asr_nano(tmp_path_factory.mktemp("nano") / "tiny", seed=11)
    s = asr.load_system(bench(shape=None, model=folder, header_tokens=0))
    yield s
    s.close()


def test_fun_asr_nano_steps_and_offline(nano_system, signal):
    """A Fun-ASR-Nano folder runs the same workloads: every step re-encodes the segment (its
    LFR frames), splices fake_token_len of them, and the prefix cache serves the prompt head."""
    from engine.models.fun_asr_nano import fake_token_len

    assert find_family(nano_system.source).name == "fun_asr_nano"
    b = bench(shape=None, model=nano_system.source, header_tokens=0, segment_seconds=8.0)
    summary, rerun = asyncio.run(asr.steps(nano_system, b, signal))
    rows = summary["all"]
    assert [r["at_s"] for r in rows] == [2.0, 4.0, 6.0, 8.0]
    assert [r["generated_tokens"] for r in rows] == [8, 16, 5 + 8, 5 + 8]
    for r in rows:
        frames = (int(r["at_s"] * 16000) - 400) // 160 + 1  # 25 ms frames every 10 ms
        assert r["encoder_tokens"] == -(-frames // 6)  # LFR: one per 6, all of them again
        assert r["audio_tokens"] == fake_token_len(r["encoder_tokens"])
    for r in rows[1:]:  # the first step filled the prefix cache
        assert r["prefill_tokens"] < r["prompt_tokens"] - 20  # system turn and instruction
    assert rerun[0]["upto"] == 32000 and rerun[0]["new_tokens"] == 8
    row = asyncio.run(
        asr.offline(nano_system, bench(concurrency=3, clip_seconds=3.0), signal, [0, 100, 200])
    )
    assert row["concurrency"] == 3 and row["audio_s_per_s"] > 0


def test_fun_asr_nano_shape_writer(tmp_path):
    """The released-shape writer, shrunk: a folder both our loader and its family detection
    take, with the released config.yaml's layout."""
    import copy

    from engine.bench import fun_asr_nano
    from engine.fun_asr_nano_asr import build_fun_asr_nano

    config = copy.deepcopy(fun_asr_nano.RELEASED_CONFIG)
    config["audio_encoder_conf"] |= {"output_size": 16, "linear_units": 32, "num_blocks": 2}
    config["audio_encoder_conf"] |= {"tp_blocks": 1, "attention_heads": 2}
    config["audio_adaptor_conf"] |= {"ffn_dim": 32, "llm_dim": 32, "encoder_dim": 16}
    llm = fun_asr_nano.QWEN3_0_6B | {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 300,
    }  # fmt: skip
    folder = fun_asr_nano.write_released_shape(tmp_path / "nano", 0, config, llm)
    assert find_family(folder).name == "fun_asr_nano"
    model, tok, _, _ = build_fun_asr_nano(folder, EngineConfig(device="cpu", dtype=torch.float32))
    assert model.config.low_frame_rate and model.config.adaptor.llm_dim == 32
    assert tok.encode("<|im_end|>") == [synthetic.token_ids()["<|im_end|>"]]
    embed = model.llm.model.embed_tokens.weight
    assert embed.abs().sum(1).nonzero().flatten().tolist() == synthetic.TEXT_BYTES


# ---- FunASR: Paraformer, Paraformer-streaming, SenseVoiceSmall ----

FUNASR_GOLDEN = Path(__file__).parent / "fixtures" / "bench_funasr_baseline.json"
FUNASR_CLIPS = dict(concurrency=3, clip_seconds=3.2)  # 5 chunks of 600 ms and a 200 ms tail


def funasr_folders(root: Path) -> dict[str, Path]:
    """The tiny test checkpoints, and the released-shape writer's folders shrunk."""
    from engine.bench import funasr_shapes
    from tests.tiny_models import build_paraformer, build_sensevoice

    folders = {
        "paraformer": build_paraformer(root / "paraformer", seed=0),
        "paraformer-streaming": build_paraformer(root / "streaming", seed=0, streaming=True),
        "sensevoice": build_sensevoice(root / "sensevoice", seed=0),
    }
    for shape in funasr_shapes.SHAPES:
        vocab = 400 if shape == "sensevoice-small" else 300
        config = shrunk_config(shape)
        folders[f"writer {shape}"] = funasr_shapes.write(shape, root / shape, 0, config, vocab)
    return folders


def shrunk_config(shape: str) -> dict:
    from engine.bench import funasr_shapes

    config = funasr_shapes.released_config(shape)
    small = {"output_size": 32, "linear_units": 64, "num_blocks": 3, "attention_heads": 2}
    config["encoder_conf"] |= small | (
        {"tp_blocks": 2} if "tp_blocks" in config["encoder_conf"] else {}
    )
    if "decoder_conf" in config:
        config["decoder_conf"] |= {"linear_units": 64, "num_blocks": 2, "att_layer_num": 2}
        config["decoder_conf"]["attention_heads"] = 2
        config["predictor_conf"]["idim"] = 32
    return config


@pytest.fixture(scope="module")
def funasr_dirs(tmp_path_factory):
    return funasr_folders(tmp_path_factory.mktemp("funasr"))


@pytest.mark.parametrize("name", json.loads(FUNASR_GOLDEN.read_text())["models"])
def test_funasr_offline_texts_equal_funasrs(funasr_dirs, signal, name):
    """Our served model's finals on the bench's clips are what funasr's generate (Paraformer,
    SenseVoice) or streaming generate (Paraformer-streaming) wrote on the same folders
    (tests/fixtures/make_bench_funasr_golden.py), the writer's folders included."""
    from engine.bench import funasr_asr

    golden = json.loads(FUNASR_GOLDEN.read_text())["models"][name]
    b = bench(shape=None, model=funasr_dirs[name], **FUNASR_CLIPS)
    system = funasr_asr.load_system(b)
    try:
        assert system.family == golden["model"]
        offsets = asr.clip_offsets(b, signal)
        assert offsets == golden["offsets"]
        row, texts = asyncio.run(funasr_asr.offline(system, b, signal, offsets))
    finally:
        system.close()
    assert row["concurrency"] == 3 and row["audio_s_per_s"] > 0
    assert all(texts)  # every clip decoded something
    equal = funasr_asr.compare_texts(system.family, texts, golden["texts"])
    assert equal == {"equal": 3, "clips": 3}, (texts, golden["texts"])


def test_funasr_baseline_requests_and_rows(funasr_dirs):
    from engine.bench import funasr_asr

    b = bench(shape=None, model=funasr_dirs["paraformer-streaming"], **FUNASR_CLIPS)
    b.baseline_streams = 2  # funasr streams the first two clips only
    request = funasr_asr.baseline_request(b, "ParaformerStreaming", Path("a.npy"), [0, 5, 9])
    assert request["streaming"] == {"clip_samples": 51200, "offsets": [0, 5], "chunk_samples": 9600}
    assert "offline" not in request and request["dtype"] == "float32"
    request = funasr_asr.baseline_request(b, "SenseVoiceSmall", Path("a.npy"), [0, 5, 9])
    assert request["offline"]["batch_size"] == 3 and "streaming" not in request
    assert funasr_asr.compare_texts("Paraformer", ["a", "b", "c"], ["a", "x"]) == {
        "equal": 1,
        "clips": 2,
    }
    theirs = {"audio_s_per_s": 50.0, "texts": ["a", "b"], "call_p50_ms": 1.0}
    theirs |= {"call_p95_ms": 2.0, "call_p99_ms": 3.0, "real_time_streams": 600.0}
    result = {
        "offline": {"concurrency": 2, "audio_s_per_s": 200.0},
        "baseline": {"streaming": theirs},
    }
    rows = funasr_asr.rows(result)
    assert rows[0] == {
        "workload": "offline",
        "at": "C=2",
        "audio_s_per_s": 200.0,
        "vs_baseline": 4.0,
    }
    assert rows[1]["workload"] == "funasr streaming" and rows[1]["p95_ms"] == 2.0
    assert rows[1]["rt_streams"] == 600.0
    assert funasr_asr.compare_texts(
        "SenseVoiceSmall", ["你好"], ["<|zh|><|HAPPY|>你<|BGM|>好"]
    ) == {
        "equal": 1,
        "clips": 1,
    }


def test_funasr_capacity_through_the_cli(funasr_dirs, tmp_path, capsys):
    """`rtserve bench asr --model <Paraformer-streaming folder>`: capacity and offline run on
    the chunked worker in float32, the Qwen3-ASR-only workloads are listed as skipped."""
    from rtserve.cli import main

    folder = funasr_dirs["paraformer-streaming"]
    args = ["bench", "asr", "--model", str(folder), "--workloads", "steps,capacity,offline"]
    args += ["--streams", "2", "--duration", "2", "--drain-seconds", "5", "--device", "cpu"]
    args += ["--concurrency", "2", "--clip-seconds", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "not applicable to ParaformerStreaming: steps" in out
    result = json.loads(next(tmp_path.glob("asr-streaming-*.json")).read_text())
    assert result["family"] == "ParaformerStreaming" and result["settings"]["dtype"] == "float32"
    (cap,) = result["capacity"]
    assert cap["partials"] >= 4 and 0 < cap["p50_ms"] <= cap["p95_ms"] < 10_000  # 600 ms chunks
    assert result["offline"]["concurrency"] == 2 and "baseline" not in result
    assert [r["workload"] for r in result["rows"]] == ["capacity", "offline"]


def test_funasr_shape_writer_released_shapes():
    """The released shapes' configs as our loaders read them, and the token files' sizes."""
    import sentencepiece as spm

    from engine.bench import funasr_shapes
    from engine.models.paraformer import ParaformerConfig
    from engine.models.sensevoice import SenseVoiceConfig

    para = ParaformerConfig.from_funasr(funasr_shapes.released_config("paraformer-large"), 8404)
    assert (para.d_model, para.vocab_size) == (512, 8404)
    stream = funasr_shapes.released_config("paraformer-large-streaming")
    assert ParaformerConfig.from_funasr(stream, 8404).streaming
    assert stream["frontend"] == "WavFrontendOnline"
    sv = funasr_shapes.released_config("sensevoice-small")
    SenseVoiceConfig.from_funasr(sv, 25055)
    assert sv["encoder_conf"]["num_blocks"] == 50 and sv["encoder_conf"]["tp_blocks"] == 20
    tokens = funasr_shapes.char_tokens(8404)
    assert len(tokens) == len(set(tokens)) == 8404 and tokens[-1] == "<unk>"
    sp = spm.SentencePieceProcessor(model_proto=funasr_shapes.sentencepiece_model(25055))
    assert sp.get_piece_size() == 25055 and sp.piece_to_id("<|zh|>") > 2
    assert sp.id_to_piece(0) == "<unk>"  # the CTC blank


def test_a_baseline_past_its_timeout_leaves_our_results(funasr_dirs, tmp_path, capsys):
    """--baseline-timeout: the baseline is reported as failed, the in-process rows stand."""
    import sys

    from rtserve.cli import main

    folder = funasr_dirs["sensevoice"]
    args = ["bench", "asr", "--model", str(folder), "--workloads", "offline,baseline"]
    args += ["--concurrency", "2", "--clip-seconds", "2", "--device", "cpu", "--out", str(tmp_path)]
    args += ["--baseline-python", sys.executable, "--baseline-timeout", "0.01"]
    assert main(args) == 0
    result = json.loads(next(tmp_path.glob("asr-sensevoice-*.json")).read_text())
    assert "timed out" in result["baseline"]["error"]
    assert result["offline"]["audio_s_per_s"] > 0


def test_serve_flags_reach_the_engines_config(tmp_path):
    from rtserve.cli import config_from_args, load_models
    from tests.tiny_models import build_qwen3_asr

    path = build_qwen3_asr(tmp_path / "asr", seed=0)
    flags = ["serve", "--model", str(path), "--no-encoder-graphs", "--no-prompt-graphs"]
    config = config_from_args(parser().parse_args(flags))
    assert config.cuda_graphs and not (config.encoder_graphs or config.prompt_graphs)
    (model,) = load_models(config).values()
    engine = model.worker.engine.config
    assert engine.cuda_graphs and not (engine.encoder_graphs or engine.prompt_graphs)
    model.worker.runtime.remove(model.worker)
    default = config_from_args(parser().parse_args(["serve", "--model", str(path)]))
    assert default.encoder_graphs and default.prompt_graphs
