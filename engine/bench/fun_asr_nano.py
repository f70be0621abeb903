"""Fun-ASR-Nano in `rtserve bench asr`: the served model on fixed output lengths, and a
random-weight checkpoint folder in the released shape (Fun-ASR-Nano-2512) for the bench.

`rtserve bench asr --model DIR` runs every workload of engine/bench/asr.py on a Fun-ASR-Nano
folder (either layout) as it does on Qwen3-ASR; its baseline is funasr's FunASRNano
(bench/fun_asr_nano_baseline.py, in the reference environment). For the released compute
without the released weights, write a folder first:

    python -m engine.bench.fun_asr_nano /tmp/fun-asr-nano-2512   # ~1.7 GB of bf16 weights

It holds config.yaml (and configuration.json, which points funasr at Qwen3-0.6B/) in the
release's layout (SenseVoiceEncoderSmall 512
x 50 + 20 timestamp blocks, the Transformer adaptor 512 -> 2048 -> 1024 with 2 blocks,
`use_low_frame_rate`, llm_dtype bf16, no CMVN), model.pt with seeded weights scaled by fan-in,
and Qwen3-0.6B/ with the released Qwen3-0.6B config.json (tied, vocabulary 151936) and the
bench's byte-level tokenizer (engine/bench/synthetic.py). As in the synthetic Qwen3-ASR, only
the lowercase letters and the space have non-zero (tied) embedding rows, so the random decoder
writes text that re-encodes to the same ids and the rollback prefix grows like a real one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from engine.bench import synthetic
from engine.bench.funasr_shapes import SENSEVOICE
from engine.config import EngineConfig
from engine.engine import Engine
from engine.fun_asr_nano_asr import FunASRNanoServed, NanoWorker, build_fun_asr_nano
from engine.models import config_yaml_model, model_type
from engine.models.fun_asr_nano import FunASRNano, FunASRNanoConfig
from engine.rollback import RollbackConfig, StepPlan
from engine.runtime import Runtime
from engine.sampling import SamplingParams
from kernels.attention import backend

LLM_DIR = "Qwen3-0.6B"
# Qwen/Qwen3-0.6B's config.json (the fields our Qwen3 reads)
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "torch_dtype": "bfloat16",
}
# Fun-ASR-Nano-2512's config.yaml, the parts inference reads (model-families.md 2.4)
RELEASED_CONFIG: dict[str, Any] = {
    "model": "FunASRNano",
    "audio_encoder": "SenseVoiceEncoderSmall",
    "audio_encoder_conf": SENSEVOICE["encoder_conf"] | {"freeze": True, "feat_permute": True},
    "llm": "Qwen3-0.6b",
    "llm_conf": {
        "hub": "hf",
        "freeze": True,
        "llm_dtype": "bf16",
        "init_param_path": LLM_DIR,
        "use_lora": False,
    },
    "audio_adaptor": "Transformer",
    "audio_adaptor_conf": {
        "downsample_rate": 1,
        "use_low_frame_rate": True,
        "ffn_dim": 2048,
        "llm_dim": 1024,
        "encoder_dim": 512,
        "n_layer": 2,
    },
    "frontend": "WavFrontend",
    "frontend_conf": SENSEVOICE["frontend_conf"],  # WavFrontend without CMVN
    "tokenizer": "HuggingfaceTokenizer",
    "tokenizer_conf": {"init_param_path": LLM_DIR},
}


# configuration.json: funasr joins these paths to the model folder (config.yaml's stay relative
# to the working directory)
CONFIGURATION = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"init_param_path": LLM_DIR},
        "llm_conf": {"init_param_path": LLM_DIR},
    },
}


def is_fun_asr_nano(path: Path) -> bool:
    """Whether a folder holds a Fun-ASR-Nano checkpoint (FunASR or transformers layout)."""
    return config_yaml_model(path) == "FunASRNano" or model_type(path) == "fun_asr_nano"


class FixedLengthNanoWorker(NanoWorker):
    """The product's Fun-ASR-Nano worker, every step decoding the bench's fixed number of
    tokens (engine/bench/asr.py's OutputLengths; bench only)."""

    lengths: Any = None  # OutputLengths

    def _params(self, plan: StepPlan) -> SamplingParams:
        prefix = len(self.tokenizer.encode(plan.prefix)) if plan.prefix else 0
        n = self.lengths.step(plan.upto / synthetic.SAMPLE_RATE, prefix)
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)


def load_fixed(
    path: Path, name: str, lengths: Any, runtime: Runtime, config: EngineConfig
) -> FunASRNanoServed:
    """A Fun-ASR-Nano folder served as `load_fun_asr_nano` serves it, on fixed lengths."""
    model, tokenizer, frontend, fmt = build_fun_asr_nano(Path(path), config)
    engine = Engine(model.llm, tokenizer, config)
    worker = FixedLengthNanoWorker(model, tokenizer, engine, RollbackConfig(), frontend)
    worker.lengths = lengths
    worker.runtime = runtime
    runtime.add(worker)
    return FunASRNanoServed(name, worker, prompt_format=fmt)


@torch.no_grad()
def write_released_shape(
    folder: Path,
    seed: int = 0,
    config: dict[str, Any] = RELEASED_CONFIG,
    llm_config: dict[str, Any] = QWEN3_0_6B,
) -> Path:
    """A FunASR-layout Fun-ASR-Nano folder with random weights in the released shape (or in
    the shape of `config` and `llm_config`: the tests shrink them)."""
    folder = Path(folder)
    (folder / LLM_DIR).mkdir(parents=True, exist_ok=True)
    ids = synthetic.token_ids()
    llm = llm_config | {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    (folder / LLM_DIR / "config.json").write_text(json.dumps(llm, indent=2))
    for name, content in synthetic.tokenizer_files().items():
        if name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            (folder / LLM_DIR / name).write_text(content, encoding="utf-8")
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "configuration.json").write_text(json.dumps(CONFIGURATION, indent=2))
    cfg = FunASRNanoConfig.from_funasr(config, llm)
    model = FunASRNano(cfg, backend(None, "cpu"))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        w = torch.randn(p.shape, generator=g)
        if p.ndim == 1:
            w = 1.0 + 0.1 * w if not name.endswith("bias") else 0.02 * w
        elif name.endswith("embed_tokens.weight"):
            keep = torch.zeros(p.shape[0], dtype=torch.bool)
            keep[synthetic.TEXT_BYTES] = True
            w[~keep] = 0  # tied: the lm_head rows too
        else:
            w /= float(torch.tensor(p.shape[1:]).prod()) ** 0.5
        p.copy_(w)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    state["llm.lm_head.weight"] = state["llm.model.embed_tokens.weight"]  # tied, as funasr saves
    torch.save(state, str(folder / "model.pt"))
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_released_shape(a.folder, a.seed))


if __name__ == "__main__":
    main()
