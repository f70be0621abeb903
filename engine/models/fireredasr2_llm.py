"""FireRedASR2-LLM (FireRedTeam): the AED's Conformer encoder, a frame-stacking adapter and a
Qwen2 decoder (Qwen2-7B-Instruct with LoRA merged at load).

    feats (1, T, 80) -> ConformerEncoder (engine/models/fireredasr2.py)       (1, T', 1280)
      -> adapter: drop T' mod 2 frames, stack pairs (2560), linear1, ReLU, linear2
                                                                 speech (1, T' // 2, hidden)
      -> prompt "<|im_start|>user\\n<speech>请转写音频为文字<|im_end|>\\n<|im_start|>assistant\\n"
         with <speech> expanded to T' // 2 positions whose input embeddings are the speech
         frames (80 ms each) -> Qwen2 -> the transcript, up to T' // 2 tokens, ending at
         <|im_end|>

The folder (FireRedTeam/FireRedASR2-LLM): `asr_encoder.pth.tar` (the encoder's `args` only),
`model.pth.tar` (`encoder.*` in the AED's names, `encoder_projector.linear{1,2}`, and the LoRA
pairs `llm.base_model.model.<name>.lora_{A,B}.default.weight`), `cmvn.ark`, and
`Qwen2-7B-Instruct/` (HF config, safetensors, tokenizer). The LoRA is merged as fireredasr2's
loader merges it: W += (B @ A) * 16 / 64 whatever the rank (its fixed alpha / r). `<speech>`
is not in the tokenizer files: the package adds it as the next id, and so does this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.fireredasr2 import ConformerEncoder, FireRedConfig, checkpoint_key
from engine.models.qwen2 import qwen2_config
from engine.models.qwen3 import Qwen3ForCausalLM
from engine.tokenizer import Tokenizer
from engine.weights import load_safetensors
from kernels.attention import AttentionBackend

LLM_DIR = "Qwen2-7B-Instruct"
LORA_SCALE = 16 / 64  # fireredasr2's _merge_lora_state_dict: lora_alpha / lora_r, fixed
LORA_PREFIX = "llm.base_model.model."
SPEECH_TOKEN = "<speech>"
PE_TABLE = "encoder.positional_encoding.pe"  # (1, P, d) in the checkpoint
PROMPT_HEAD = "<|im_start|>user\n"
PROMPT_TAIL = "请转写音频为文字<|im_end|>\n<|im_start|>assistant\n"


class Adapter(nn.Module):
    """Stacks `rate` encoder frames and projects them to the LLM width."""

    def __init__(self, encoder_dim: int, llm_dim: int, rate: int = 2) -> None:
        super().__init__()
        self.rate = rate
        self.linear1 = nn.Linear(encoder_dim * rate, llm_dim)
        self.linear2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """enc (B, T', d), lengths (B,) -> (B, T' // rate, llm_dim), lengths // rate."""
        B, T, d = enc.shape
        kept = T - T % self.rate
        x = enc[:, :kept].reshape(B, kept // self.rate, d * self.rate)
        return self.linear2(F.relu(self.linear1(x))), lengths.clamp(max=kept) // self.rate


class FireRedLlm(nn.Module):
    def __init__(self, enc_cfg: FireRedConfig, llm: Qwen3ForCausalLM, rate: int) -> None:
        super().__init__()
        self.encoder = ConformerEncoder(enc_cfg)
        self.encoder_projector = Adapter(enc_cfg.d_model, llm.config.hidden_size, rate)
        self.decoder = llm

    def speech(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, 80), frames (B,) -> speech embeddings (B, S, hidden), lengths (B,)."""
        enc, lengths = self.encoder(feats, frames)
        return self.encoder_projector(enc, lengths)

    def load_audio_weights(self, state: dict[str, Tensor]) -> None:
        """The encoder and adapter of model.pth.tar's state dict."""
        for prefix, module in (
            ("encoder.", self.encoder),
            ("encoder_projector.", self.encoder_projector),
        ):
            wanted = {k: checkpoint_key(prefix + k) for k in module.state_dict()}
            missing = [k for k in wanted.values() if k not in state]
            if missing:
                raise ValueError(f"checkpoint lacks {missing[:5]}")
            module.load_state_dict(
                {k: state[c][0] if c == PE_TABLE else state[c] for k, c in wanted.items()}
            )


def merge_lora(weights: dict[str, Tensor], state: dict[str, Tensor]) -> int:
    """Adds each LoRA pair of model.pth.tar into its base weight (HF name), in place; returns
    how many were merged. A pair whose base weight is missing is an error."""
    merged = 0
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            continue
        base = key.replace(".lora_A.default.weight", ".weight").removeprefix(LORA_PREFIX)
        if base not in weights:
            raise ValueError(f"LoRA pair {key} has no base weight {base}")
        w = weights[base]
        weights[base] = w + (b @ a).to(w.dtype) * LORA_SCALE
        merged += 1
    return merged


def read_args(path: Path) -> argparse.Namespace:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(str(path), map_location="cpu", weights_only=True)["args"]


def build_fireredasr2_llm(
    path: Path, attn: AttentionBackend, device: str | torch.device = "cpu"
) -> tuple[FireRedLlm, Tokenizer]:
    """The float32 model (cast it for serving) and the Qwen2 tokenizer, from a FireRedASR2-LLM
    folder."""
    path = Path(path)
    llm_dir = path / LLM_DIR
    if not (llm_dir / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no {LLM_DIR}/config.json (the LLM variant's Qwen2)")
    enc_cfg = FireRedConfig.from_args(read_args(path / "asr_encoder.pth.tar"))
    with torch.serialization.safe_globals([argparse.Namespace]):
        doc = torch.load(str(path / "model.pth.tar"), map_location="cpu", weights_only=True)
    args, state = doc["args"], doc.get("model_state_dict") or {}
    cfg = qwen2_config(json.loads((llm_dir / "config.json").read_text()))
    weights = load_safetensors(llm_dir)
    if merge_lora(weights, state) == 0 and getattr(args, "use_lora", False):
        raise ValueError(f"{path}: use_lora is set but model.pth.tar has no LoRA pairs")
    with torch.device(device):
        llm = Qwen3ForCausalLM(cfg, attn)
        model = FireRedLlm(enc_cfg, llm, getattr(args, "encoder_downsample_rate", 2))
    llm.load_weights(weights)
    model.load_audio_weights(state)
    return model.eval(), Tokenizer.from_folder(llm_dir)


def speech_token_id(tokenizer: Tokenizer) -> int:
    """`<speech>`'s id: the tokenizer's own if it has one, else the next id (as the package
    adds it)."""
    own = tokenizer.token_to_id(SPEECH_TOKEN)
    return own if own is not None else tokenizer.vocab_size


def prompt_ids(tokenizer: Tokenizer, n_speech: int) -> tuple[list[int], int]:
    """The decode prompt with `n_speech` speech positions, and where they start."""
    head = tokenizer.encode(PROMPT_HEAD)
    ids = head + [speech_token_id(tokenizer)] * n_speech + tokenizer.encode(PROMPT_TAIL)
    return ids, len(head)
