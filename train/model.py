"""The demo recognizer for training: its config, the teacher-forced loss and greedy decoding.

The model is the production one (engine/models/qwen3_asr.py: AuT encoder + Qwen3 decoder), built
from a released-layout config.json dict, so what trains is exactly what the server loads. The
encoder runs its padded batch path (`encode_padded`, plain torch); the decoder its dense
path (`forward_dense`); an auxiliary CTC loss on the audio tokens speeds up learning to read the
audio. The prompt comes from the production prompt builder (engine/asr_prompt.py):
the system turn is empty, the answer is `language English<asr_text>TEXT<|im_end|>`, and audio
without speech answers `language None<asr_text>`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio.features import whisper_features
from engine.asr_prompt import Prompt, build_prompt, parse_output
from engine.models.qwen3_asr import CHUNK_FRAMES, Qwen3ASR, Qwen3ASRConfig, audio_tokens
from engine.tokenizer import Tokenizer
from kernels.attention import backend
from kernels.fused import rms_norm_ref
from train.tokenizer import ANSWER_PREFIX, SILENCE_ANSWER

# (audio_config, text_config) sizes. "default" is the shipped model: 6.9 M parameters, 13 MiB
# in bf16 (the limit is 16 MiB); "small" trains on a CPU in minutes; "tiny" is for tests.
PRESETS: dict[str, tuple[dict, dict]] = {
    "default": (
        dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
             downsample_hidden_size=64, output_dim=256),
        dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64),
    ),
    "small": (
        dict(d_model=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=512,
             downsample_hidden_size=32, output_dim=128),
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=64),
    ),
    "tiny": (
        dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
             downsample_hidden_size=8, output_dim=32),
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16),
    ),
}  # fmt: skip
MAX_POSITIONS = 8192
ROPE_THETA = 1_000_000.0
AUDIO_TOKENS = ("<|audio_start|>", "<|audio_end|>", "<|audio_pad|>")


def config_json(preset: str, tokenizer: Tokenizer) -> dict:
    """config.json of the released Qwen3-ASR layout for a preset and a tokenizer."""
    audio, text = PRESETS[preset]
    start, end, pad = (tokenizer.token_to_id(t) for t in AUDIO_TOKENS)
    half = text["head_dim"] // 2
    side = half * 5 // 16  # the released [24, 20, 20] of 64, scaled to this head size
    audio_config = {
        **audio,
        "num_mel_bins": 128,
        "n_window": 50,
        "n_window_infer": 800,
        "max_source_positions": 1500,
        "activation_function": "gelu",
        "num_hidden_layers": audio["encoder_layers"],
        "model_type": "qwen3_asr_audio_encoder",
    }
    text_config = {
        **text,
        "vocab_size": tokenizer.vocab_size,
        "rms_norm_eps": 1e-6,
        "rope_theta": ROPE_THETA,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": [half - 2 * side, side, side],
            "interleaved": True,
        },
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "model_type": "qwen3_asr_text",
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": ["English"],
        "thinker_config": {
            "audio_config": audio_config,
            "text_config": text_config,
            "audio_token_id": pad,
            "audio_start_token_id": start,
            "audio_end_token_id": end,
            "model_type": "qwen3_asr_thinker",
        },
    }


def build_model(config: dict, device: torch.device | str = "cpu") -> Qwen3ASR:
    """A freshly initialised model (tied embeddings: no lm_head is stored) on `device`."""
    cfg = Qwen3ASRConfig.from_dict(config, lm_head_stored=False)
    with torch.device(device):
        model = Qwen3ASR(cfg, backend("sdpa"))
    for m in model.modules():
        # Small normal weights: nn.Embedding's N(0, 1), tied to lm_head, would start with
        # logits of size ~sqrt(hidden).
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear | nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)
    # The encoder's input path keeps the features' scale: with PyTorch's default conv init and
    # std 0.02 the audio reached the first layer at 1-2% of the amplitude of the chunk
    # positions added there; now at about the same.
    encoder = model.encoder
    for conv in (encoder.conv2d1, encoder.conv2d2, encoder.conv2d3):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # GELU is ReLU-like here
    nn.init.normal_(encoder.conv_out.weight, std=encoder.conv_out.in_features**-0.5)
    return model


@dataclass(frozen=True)
class Padded:
    x: torch.Tensor  # (B, samples) waveforms, zero-padded on the right, in their own dtype
    lengths: torch.Tensor  # (B,) samples


def pad(waves: list[np.ndarray]) -> Padded:
    """Right-padded rows in the waves' dtype (the synthesized speech is float16: half the bytes
    to hand over and to copy to the device; the features are computed in float32 there)."""
    lengths = np.array([w.size for w in waves])
    x = np.zeros((len(waves), int(lengths.max())), dtype=waves[0].dtype)
    for i, w in enumerate(waves):
        x[i, : w.size] = w
    return Padded(torch.from_numpy(x), torch.from_numpy(lengths))


def right_padded(rows: list[list[int]], fill: int) -> np.ndarray:
    """Token rows -> one (B, longest) int64 array, `fill` after each row's end."""
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass(frozen=True)
class Prepared:
    """A training batch as far as the CPU takes it."""

    waves: Padded
    answers: list[list[int]]  # answer token ids (transcript and end token), per item
    ctc_targets: list[list[int]]  # transcript token ids ([] for silence), per item
    snr_db: list[float] | None  # noise added on the device, per item (inf: none)


def prepare(
    tokenizer: Tokenizer,
    waves: list[np.ndarray],
    texts: list[str],
    snr_db: list[float] | None = None,
) -> Prepared:
    """The CPU side of a training batch: padding and tokenizing, which needs the tokenizer
    alone (train/feed.py runs it in its own process)."""
    end = tokenizer.token_to_id("<|im_end|>")
    answers = [ANSWER_PREFIX + t if t else SILENCE_ANSWER for t in texts]
    return Prepared(
        pad(waves),
        [tokenizer.encode(a) + [end] for a in answers],
        [tokenizer.encode(t) if t else [] for t in texts],
        snr_db,
    )


class Batcher:
    """Turns utterances into model inputs: features, audio embeddings, prompt ids, labels."""

    def __init__(self, model: Qwen3ASR, tokenizer: Tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt: Prompt = build_prompt(tokenizer)
        self.end_id = tokenizer.token_to_id("<|im_end|>")
        self.fill_id = tokenizer.token_to_id("<|endoftext|>")
        self.window = model.config.audio.window_frames

    def audio(
        self, waves: Padded, device: torch.device, snr_db: list[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz waveforms -> the audio-token embeddings of all items end to end (N, hidden)
        and each item's token count (B,). snr_db: white noise added on the device at these
        SNRs (inf: none), per item. Every item is cut into the encoder's 8 s windows as the
        server cuts it, and all windows run as one padded batch (`encode_padded`)."""
        x = waves.x.to(device, non_blocking=True).float()  # one transfer for the batch
        lengths = waves.lengths.to(device)
        if snr_db is not None:
            rms = (x.pow(2).sum(1) / lengths.clamp(min=1)).sqrt()
            scale = rms * 10 ** (-torch.tensor(snr_db, device=device) / 20)
            x = x + torch.randn_like(x) * scale[:, None]
        # Features in float32 as the server computes them, outside any autocast.
        with torch.autocast(device.type, enabled=False):
            feats, frames = whisper_features(x, lengths)  # (B, n_mels, T), (B,)
        B, n_mels, T = feats.shape
        # Windows as wide as the longest item needs, in whole chunks, at most the model's 8 s.
        width = min(self.window, -(-max(T, 1) // CHUNK_FRAMES) * CHUNK_FRAMES)
        n = -(-max(T, 1) // width)  # windows per item
        at = torch.arange(n * width, device=device)
        # zero past each item's end, as the server pads a window's last chunk
        feats = F.pad(feats, (0, n * width - T)) * (at < frames[:, None])[:, None]
        windows = feats.view(B, n_mels, n, width).transpose(1, 2).reshape(B * n, n_mels, width)
        per_window = (frames[:, None] - at[None, ::width]).clamp(0, width).reshape(-1)
        used = per_window > 0
        dtype = self.model.encoder.conv_out.weight.dtype
        h, valid = self.model.encoder.encode_padded(windows[used].to(dtype), per_window[used])
        return h[valid], audio_tokens(frames)

    def embed(self, rows: list[list[int]], audio: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded token rows -> input embeddings with the audio pads replaced by
        `audio`, the items' audio tokens end to end (N, hidden)."""
        ids = torch.from_numpy(right_padded(rows, self.fill_id)).to(audio.device)
        x = self.model.decoder.model.embed_tokens(ids)
        mask = ids == self.prompt.pad_id
        return x.masked_scatter(mask[..., None], audio.to(x.dtype))

    def losses(self, batch: Prepared) -> dict[str, torch.Tensor]:
        """`ce`: mean cross entropy of the answers (transcript and end token), teacher forced;
        `ctc`: the auxiliary CTC loss of the audio tokens (see `ctc_loss`)."""
        device = self.model.decoder.lm_head.weight.device
        audio, counts = self.audio(batch.waves, device, batch.snr_db)
        rows, labels = [], []
        for n, answer in zip(counts.tolist(), batch.answers, strict=True):
            prompt = self.prompt.ids(self.tokenizer, n)
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        hidden = self.model.decoder.forward_dense(self.embed(rows, audio))
        target = torch.from_numpy(right_padded(labels, -100)).to(device)[:, 1:]
        keep = target != -100  # position t predicts token t + 1
        logits = self.model.decoder.lm_head(hidden[:, :-1][keep])
        return {
            "ce": F.cross_entropy(logits.float(), target[keep]),
            "ctc": self.ctc_loss(audio, counts, batch.ctc_targets),
        }

    def ctc_loss(
        self, audio: torch.Tensor, counts: torch.Tensor, targets: list[list[int]]
    ) -> torch.Tensor:
        """CTC of the transcript tokens over the audio tokens (all items' end to end, `counts`
        per item), read through the decoder's own final norm and (tied) output embedding,
        blank = `<|audio_pad|>`. A decoder-only recognizer first learns the language and only
        later to read the audio; this loss gives the encoder a direct signal from the first
        step, and pulls each audio token towards the embedding of what is said there. It adds
        no weights."""
        # Utterances without words (silence) are left out: CUDA's CTC has given NaN gradients
        # for empty targets (pytorch/pytorch#18215).
        spoken = [i for i, t in enumerate(targets) if t]
        if not spoken:
            return audio.sum() * 0.0
        norm = self.model.decoder.model.norm
        logp = self.model.decoder.lm_head(rms_norm_ref(audio, norm.weight, norm.eps))
        logp = logp.float().log_softmax(-1)  # (N, V)
        longest = int(counts.max())
        valid = torch.arange(longest, device=audio.device) < counts[:, None]  # (B, T)
        padded = logp.new_zeros(len(targets), longest, logp.shape[1])
        padded = padded.masked_scatter(valid[..., None], logp)  # (B, T, V)
        rows = torch.tensor(spoken, device=audio.device)
        return F.ctc_loss(
            padded[rows].transpose(0, 1),  # (T, S, V)
            torch.tensor([i for t in targets for i in t], dtype=torch.long, device=audio.device),
            counts[rows],
            torch.tensor([len(targets[i]) for i in spoken], device=audio.device),
            blank=self.prompt.pad_id,
            zero_infinity=True,
        )

    @torch.no_grad()
    def transcribe(self, waves: list[np.ndarray], max_new: int = 192) -> list[str]:
        """Greedy decoding of a batch with the dense path (recomputes the whole prefix each
        token: simple, and cheap at these sizes). Returns the parsed transcripts."""
        audio, counts = self.audio(pad(waves), self.model.decoder.lm_head.weight.device)
        rows = [self.prompt.ids(self.tokenizer, n) for n in counts.tolist()]
        starts = [len(r) for r in rows]
        done = [False] * len(rows)
        stops = set(self.tokenizer.eos_token_ids) | {self.end_id, self.fill_id}
        for _ in range(max_new):
            hidden = self.model.decoder.forward_dense(self.embed(rows, audio))
            last = torch.tensor([len(r) - 1 for r in rows], device=hidden.device)
            logits = self.model.decoder.lm_head(hidden[torch.arange(len(rows)), last])
            logits[:, self.prompt.pad_id] = -torch.inf  # the CTC blank: never text
            for i, t in enumerate(logits.argmax(-1).tolist()):
                if not done[i]:
                    rows[i].append(t)
                    done[i] = t in stops
            if all(done):
                break
        texts = []
        for r, s in zip(rows, starts, strict=True):
            raw = self.tokenizer.decode(r[s:], skip_special_tokens=True)
            texts.append(parse_output(raw)[1])
        return texts
