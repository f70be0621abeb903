"""`rtserve bench chat`: decode throughput and time to first token, against HF transformers.

Fixed workloads (random prompt ids, `ignore_eos`, greedy), the same weights in both engines:
- decode: B requests of `prompt_len` tokens each generating `output_len` tokens, for each B in
  `batch_sizes`. Reported: output tokens/s over the whole run, and decode tokens/s over the steps
  after every request has its first token. The baseline is `generate()` on one padded batch.
- ttft: one request of each length in `ttft_lens`; time from submission to its first token.
- eager: with CUDA graphs on, the decode rows again with graphs switched off on the same engine
  (`ours-eager`), which isolates what replaying decode steps from graphs gains.
The JSON records the attention backend of each phase and, per decode row, the share of decode
steps replayed from CUDA graphs.
Weights are a checkpoint folder (`--model`) or random ones in a named shape (`--shape`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.bench import report
from engine.config import EngineConfig
from engine.engine import Engine
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.sampling import SamplingParams
from engine.weights import load_safetensors
from kernels.attention import backend, phases

# Random-weight shapes of released models (their config.json fields that matter here).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    ),
    "qwen3-0.6b": dict(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
}
COMMON = dict(
    model_type="qwen3",
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=40960,
    hidden_act="silu",
    attention_bias=False,
)


@dataclass
class ChatBench:
    shape: str | None = "qwen3-0.6b"
    model: Path | None = None
    batch_sizes: tuple[int, ...] = (1, 64, 256)
    prompt_len: int = 128
    output_len: int = 128
    ttft_lens: tuple[int, ...] = (1024, 8192)
    baseline: bool = True
    attention_backend: str | None = None  # None: the best available
    cuda_graphs: bool = True
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "bfloat16" if torch.cuda.is_available() else "float32"
    block_size: int = 16
    seed: int = 0

    def config_dict(self) -> dict[str, Any]:
        if self.model is not None:
            return json.loads((self.model / "config.json").read_text())
        return {**COMMON, **SHAPES[self.shape]}


def run(b: ChatBench) -> dict[str, Any]:
    torch.manual_seed(b.seed)
    dtype = getattr(torch, b.dtype)
    cfg_dict = b.config_dict()
    cfg = Qwen3Config.from_dict(cfg_dict)
    hf = _hf_model(cfg_dict, dtype, b.device) if b.baseline else None
    if b.model is not None:
        weights = load_safetensors(b.model, device=b.device)
    elif hf is not None:
        weights = hf.state_dict()
    else:
        weights = _random_weights(cfg, dtype, b.device)
    tokens_needed = max(max(b.batch_sizes) * (b.prompt_len + b.output_len), max(b.ttft_lens) + 8)
    num_blocks = int(1.1 * tokens_needed / b.block_size) + max(b.batch_sizes)
    engine = _engine(cfg, weights, dtype, b, num_blocks)
    del weights
    steps = [("ours", n) for n in b.batch_sizes] + [("ours-ttft", n) for n in b.ttft_lens]
    if engine.runner.graphs is not None:
        steps += [("ours-eager", n) for n in b.batch_sizes]
    if hf is not None:
        steps += [("transformers", n) for n in b.batch_sizes]
        steps += [("transformers-ttft", n) for n in b.ttft_lens]
    rows: list[dict[str, Any]] = []
    _warm_up(engine, hf, b, cfg.vocab_size)
    same_model = _logit_gap(engine, hf, cfg.vocab_size) if hf is not None else None
    for i, (who, n) in enumerate(steps):
        report.progress(i, len(steps), f"{who} {n}")
        g = torch.Generator().manual_seed(b.seed + n)
        if who == "ours":
            rows.append(_ours_decode(engine, _prompts(n, b.prompt_len, cfg.vocab_size, g), b))
        elif who == "ours-eager":
            graphs, engine.runner.graphs = engine.runner.graphs, None
            try:
                row = _ours_decode(engine, _prompts(n, b.prompt_len, cfg.vocab_size, g), b)
            finally:
                engine.runner.graphs = graphs
            rows.append({**row, "engine": "ours-eager"})
        elif who == "ours-ttft":
            # unmeasured first: a length's first prompt may compile kernels (FlashAttention-4's
            # CuTe kernels take seconds the first time they see a shape)
            _ours_ttft(engine, _prompts(1, n, cfg.vocab_size, g))
            rows.append(_ours_ttft(engine, _prompts(1, n, cfg.vocab_size, g)))
        elif who == "transformers":
            rows.append(_hf_decode(hf, _prompts(n, b.prompt_len, cfg.vocab_size, g), b))
        else:
            _hf_ttft(hf, _prompts(1, n, cfg.vocab_size, g), b)  # the same unmeasured first
            rows.append(_hf_ttft(hf, _prompts(1, n, cfg.vocab_size, g), b))
    report.progress(len(steps), len(steps), "done")
    return {
        "workload": "chat",
        "hardware": report.hardware(),
        "torch": torch.__version__,
        "attention_backend": phases(engine.runner.attention),
        "cuda_graph_sizes": engine.runner.describe()["cuda_graph_sizes"],
        # max |logit difference| / logit std between the two engines on one prompt: the same
        # model (dtype rounding only) when small
        "logit_gap_vs_transformers": same_model,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(b).items()},
        "rows": rows,
    }


def _engine(cfg, weights, dtype, b: ChatBench, num_blocks: int) -> Engine:
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(b.device):
            model = Qwen3ForCausalLM(cfg, backend(b.attention_backend, b.device))
    finally:
        torch.set_default_dtype(default)
    model.load_weights(weights)
    model.eval()
    config = EngineConfig(
        block_size=b.block_size,
        num_blocks=num_blocks,
        max_num_seqs=max(b.batch_sizes),
        max_num_batched_tokens=max(8192, max(b.ttft_lens)),
        max_prefill_chunk=max(8192, max(b.ttft_lens)),
        device=b.device,
        dtype=dtype,
        enable_prefix_caching=False,  # random prompts never share blocks; measure the compute
        cuda_graphs=b.cuda_graphs,
    )
    return Engine(model, None, config)


def _random_weights(cfg: Qwen3Config, dtype, device) -> dict[str, torch.Tensor]:
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg, backend(None, device)).to(dtype)
    return dict(model.state_dict())


def _hf_model(cfg_dict: dict[str, Any], dtype, device):
    try:
        import transformers
    except ImportError as e:
        raise SystemExit(
            "the baseline needs transformers (pip install 'rtserve[bench]'), or pass --no-baseline"
        ) from e
    config = transformers.Qwen3Config(**cfg_dict)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        model = transformers.Qwen3ForCausalLM._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    return model.eval()


def _prompts(n: int, length: int, vocab: int, g: torch.Generator) -> list[list[int]]:
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def _warm_up(engine: Engine, hf, b: ChatBench, vocab: int) -> None:
    g = torch.Generator().manual_seed(1)
    engine.generate(_prompts(2, 16, vocab, g), _greedy(4))
    if hf is not None:
        _hf_decode(hf, _prompts(2, 16, vocab, g), ChatBench(output_len=4, device=b.device))


@torch.inference_mode()
def _logit_gap(engine: Engine, hf, vocab: int) -> float:
    ids = _prompts(1, 64, vocab, torch.Generator().manual_seed(2))[0]
    ref = hf(torch.tensor([ids], device=engine.config.device)).logits[0, -1].float()
    req = engine.add(ids, _greedy(1))
    batch = engine.scheduler.schedule()
    logits, _ = engine.runner.run(batch)
    engine.abort(req.id)
    return float((logits[0] - ref).abs().max() / ref.std())


def _ours_decode(engine: Engine, prompts: list[list[int]], b: ChatBench) -> dict[str, Any]:
    runner = engine.runner
    decode0, graph0 = runner.decode_steps, runner.graph_steps
    _sync()
    t0 = time.perf_counter()
    reqs = [engine.add(p, _greedy(b.output_len)) for p in prompts]
    while any(not r.output_ids for r in reqs):
        engine.step()
    _sync()
    t1 = time.perf_counter()
    while engine.has_work():
        engine.step()
    _sync()
    t2 = time.perf_counter()
    n = len(prompts)
    return {
        "engine": "ours",
        "workload": f"decode B={n}",
        "batch": n,
        "output_tok_s": n * b.output_len / (t2 - t0),
        "decode_tok_s": n * (b.output_len - 1) / (t2 - t1),
        "seconds": t2 - t0,
        "graph_share": (runner.graph_steps - graph0) / max(runner.decode_steps - decode0, 1),
    }


def _ours_ttft(engine: Engine, prompts: list[list[int]]) -> dict[str, Any]:
    _sync()
    t0 = time.perf_counter()
    req = engine.add(prompts[0], _greedy(1))
    while not req.output_ids:
        engine.step()
    _sync()
    ttft = time.perf_counter() - t0
    return {
        "engine": "ours",
        "workload": f"ttft {len(prompts[0])}",
        "prompt": len(prompts[0]),
        "ttft_ms": 1000 * ttft,
    }


@torch.inference_mode()
def _hf_decode(hf, prompts: list[list[int]], b: ChatBench) -> dict[str, Any]:
    ids = torch.tensor(prompts, device=b.device)
    _sync()
    t0 = time.perf_counter()
    hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=b.output_len,
        min_new_tokens=b.output_len,
        do_sample=False,
        pad_token_id=0,
    )
    _sync()
    dt = time.perf_counter() - t0
    n = len(prompts)
    return {
        "engine": "transformers",
        "workload": f"decode B={n}",
        "batch": n,
        "output_tok_s": n * b.output_len / dt,
        "seconds": dt,
    }


@torch.inference_mode()
def _hf_ttft(hf, prompts: list[list[int]], b: ChatBench) -> dict[str, Any]:
    ids = torch.tensor(prompts, device=b.device)
    _sync()
    t0 = time.perf_counter()
    hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0
    )
    _sync()
    ttft = time.perf_counter() - t0
    return {
        "engine": "transformers",
        "workload": f"ttft {ids.shape[1]}",
        "prompt": ids.shape[1],
        "ttft_ms": 1000 * ttft,
    }


def summarize(result: dict[str, Any], out: Path, name: str) -> str:
    rows = result["rows"]
    by = {(r["engine"], r["workload"]): r for r in rows}
    for r in rows:
        base = by.get(("transformers", r["workload"]))
        eager = by.get(("ours-eager", r["workload"]))
        if r["engine"] == "ours" and eager is not None:
            r["vs_eager"] = r["output_tok_s"] / eager["output_tok_s"]
        if r["engine"] == "ours" and base is not None:
            if "output_tok_s" in r:
                r["vs_transformers"] = r["output_tok_s"] / base["output_tok_s"]
            else:
                r["vs_transformers"] = base["ttft_ms"] / r["ttft_ms"]
    path = report.write(out, name, result)
    decode = [r for r in rows if "output_tok_s" in r]
    groups = sorted({r["workload"] for r in decode}, key=lambda w: int(w.split("=")[1]))
    series = {
        eng: [by[(eng, w)]["output_tok_s"] for w in groups if (eng, w) in by]
        for eng in ("ours", "ours-eager", "transformers")
        if any((eng, w) in by for w in groups)
    }
    png = path.with_suffix(".png")
    plotted = report.plot_bars(
        png, f"{name}: output tokens/s ({result['hardware']})", groups, series, "tokens/s"
    )
    text = report.table(
        rows,
        [
            "engine",
            "workload",
            "output_tok_s",
            "decode_tok_s",
            "graph_share",
            "ttft_ms",
            "vs_transformers",
            "vs_eager",
        ],
    )
    return text + f"\n\nJSON: {path}" + (f"\nplot: {png}" if plotted else "")
