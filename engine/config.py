"""Engine settings: KV cache geometry, the per-step token budget, and the performance modes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = (
        None  # None: sized from memory (kv_cache_fraction / cpu_kv_cache_bytes)
    )
    kv_cache_fraction: float = 0.85  # of the GPU memory free after loading weights
    cpu_kv_cache_bytes: int = 256 << 20
    max_num_batched_tokens: int = 8192  # the token budget of one step
    # Requests running at once. At 1,000 live Qwen3-ASR streams on the H200 (about 400 partial
    # requests a second) 256 left requests queued for a free slot: p95 1.0 s against 0.54 s
    # with 512 (docs/benchmarks.md).
    max_num_seqs: int = 512
    max_prefill_chunk: int = 2048  # most prompt tokens one request computes in one step
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: torch.dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    attention_backend: str | None = None  # None: the best available (kernels/attention.py)
    cuda_graphs: bool = True  # replay decode steps from CUDA graphs (engine/cuda_graphs.py)
    max_graph_batch: int = 512  # the largest decode batch captured (also <= max_num_seqs)
    # A step that computes prompt tokens costs several decode steps, from a graph or not. While
    # requests decode, prompt tokens are taken at most every `prefill_interval` steps, so that
    # prompts are batched (8 was worse than 4 on the H200 at 512 streams and under chat load).
    prefill_interval: int = 4
    # Replay the speech encoder's batched calls (engine/encoder_graphs.py) and the steps that
    # take up to 8,192 tokens in short rows (engine/prompt_graphs.py) from CUDA graphs as well,
    # with cuda_graphs. On the H200 the two together took 64 live streams' p95 partial latency
    # from 390 to 59 ms and 512 streams' from 1.5 s to 155 ms (docs/benchmarks.md).
    encoder_graphs: bool = True
    prompt_graphs: bool = True

    @classmethod
    def for_mode(cls, mode: str, **overrides) -> EngineConfig:
        """`--performance-mode`: small steps for latency, big ones for throughput."""
        modes = {
            "interactivity": dict(max_num_batched_tokens=2048, max_prefill_chunk=512),
            "balanced": dict(max_num_batched_tokens=8192, max_prefill_chunk=2048),
            "throughput": dict(max_num_batched_tokens=16384, max_prefill_chunk=8192),
        }
        if mode not in modes:
            raise ValueError(f"unknown performance mode {mode!r}; one of {sorted(modes)}")
        return replace(cls(**modes[mode]), **overrides)
