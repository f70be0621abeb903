"""SenseVoiceSmall (FunASR): SAN-M encoder with task queries, and a CTC head.

    feats (B, T, 560)  LFR-stacked fbank after CMVN (audio/fbank.py), 60 ms a frame
      -> four queries prepended: embed[[lid, 1, 2, textnorm]]      x: (B, 4 + T, 560)
           lid: auto 0, zh 3, en 4, yue 7, ja 11, ko 12, nospeech 13
           textnorm: withitn 14 (use_itn), woitn 15
      -> SANMEncoder: x * sqrt(d) + positions, `encoders0` (560 -> d), `encoders` (N - 1 layers),
         `after_norm`; then `tp_encoders` (tp_blocks more SAN-M layers), `tp_norm`
                                                                    h: (B, 4 + T, d)
      -> CTC head: log_softmax(ctc_lo(h))                           (B, 4 + T, V)
      -> greedy CTC: argmax per frame, repeats collapsed, blank 0 dropped  -> token ids

The four query frames are decoded like the others: the trained model answers them with its rich
tags, language, emotion, audio event and text normalisation, in that order
(`<|zh|><|NEUTRAL|><|Speech|><|woitn|>`), and the transcript follows. The language query is
`auto` or a forced language; `use_itn` picks the `withitn` query, and the model itself then
writes numbers and punctuation (there is no separate ITN step). `parse_rich` splits a decoded
text into its tags and the transcript.

All of it is funasr 1.4.16's `SenseVoiceSmall.inference` (models/sense_voice/model.py), with
these differences of form, not of result:
- a batch may mix languages and `use_itn` per item (funasr uses one setting per call);
- items are right-padded with validity masks and get what they would get alone (funasr's
  `SenseVoiceEncoderSmall` masks the same way);
- SenseVoice's LayerNorm is torch's with eps 1e-5 (its own class, not the 1e-12 one of the
  Paraformer encoder), so the shared SAN-M layers are built and then given that eps.

Served (`load_sensevoice` -> `SenseVoiceServed`), it runs on the segment policy
(engine/chunked.py's `SegmentWorker`, with SenseVoice's `_decode`): VAD segments, partials by
re-decoding the open segment every `step_seconds`, finals at commits; the streams due in a step
share one batched `recognize`, each with its own queries (`QueryOptions`: the stream's
`language`, and `use_itn` given at `open_stream` or the model's default). Partials and finals
carry the transcript without tags; a `Final` also has the language (detected, else forced) and
`tags` ({"language", "emotion", "event", "textnorm"}: what the model tagged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.sanm import SANMEncoder, SANMEncoderLayer, layer_norm

LN_EPS = 1e-5  # funasr.models.sense_voice.model.LayerNorm: nn.LayerNorm's default

# The embedding rows of the queries (SenseVoiceSmall.lid_dict, textnorm_dict; 1 and 2 are the
# fixed event and emotion queries).
LANGUAGE_QUERIES = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
TEXTNORM_QUERIES = {"withitn": 14, "woitn": 15}
EVENT_EMOTION_QUERIES = (1, 2)
NUM_QUERIES = 4  # frames prepended to the features: [lid, 1, 2, textnorm]


@dataclass(frozen=True)
class SenseVoiceConfig:
    """The model's shape, from a FunASR config.yaml (see `from_funasr`)."""

    input_size: int = 560  # n_mels * lfr_m
    vocab_size: int = 25055
    d_model: int = 512
    heads: int = 4
    ffn: int = 2048
    blocks: int = 50  # encoders0 (1) + encoders (blocks - 1)
    tp_blocks: int = 20
    kernel_size: int = 11
    shift: int = 0
    embed_rows: int = 16  # 7 + len(lid_dict) + len(textnorm_dict)
    blank_id: int = 0

    @classmethod
    def from_funasr(cls, config: dict[str, Any], vocab_size: int) -> SenseVoiceConfig:
        """From config.yaml's `model`, `encoder(_conf)`, `frontend_conf`, `model_conf`; refuses
        variants this file does not implement."""
        if config.get("model") != "SenseVoiceSmall":
            raise ValueError(f"not a SenseVoiceSmall config (model: {config.get('model')!r})")
        if config.get("encoder") != "SenseVoiceEncoderSmall":
            raise ValueError(f"encoder {config.get('encoder')!r} is not SenseVoiceEncoderSmall")
        enc = config.get("encoder_conf") or {}
        front = config.get("frontend_conf") or {}
        checks = {
            "attention": (enc.get("selfattention_layer_type", "sanm"), "sanm"),
            "normalize_before": (enc.get("normalize_before", True), True),
            "concat_after": (enc.get("concat_after", False), False),
        }
        for what, (got, expected) in checks.items():
            if got != expected:
                raise ValueError(f"encoder {what} {got!r} is not supported ({expected!r})")
        blank_id = (config.get("model_conf") or {}).get("blank_id", 0)
        return cls.from_encoder_conf(enc, front, vocab_size, blank_id)

    @classmethod
    def from_encoder_conf(
        cls, enc: dict[str, Any], front: dict[str, Any], vocab_size: int, blank_id: int = 0
    ) -> SenseVoiceConfig:
        """The encoder's shape from its conf section and `frontend_conf` (funasr's keys and
        defaults); also Fun-ASR-Nano's audio encoder."""
        return cls(
            input_size=front.get("n_mels", 80) * front.get("lfr_m", 1),
            vocab_size=vocab_size,
            d_model=enc.get("output_size", 256),
            heads=enc.get("attention_heads", 4),
            ffn=enc.get("linear_units", 2048),
            blocks=enc.get("num_blocks", 6),
            tp_blocks=enc.get("tp_blocks", 0),
            kernel_size=enc.get("kernel_size", 11),
            shift=enc.get("sanm_shfit", 0),
            blank_id=blank_id,
        )


class SenseVoiceEncoder(SANMEncoder):
    """SenseVoiceEncoderSmall: the SAN-M encoder, then `tp_encoders` and `tp_norm`."""

    def __init__(self, cfg: SenseVoiceConfig) -> None:
        d = cfg.d_model
        args = (cfg.heads, cfg.ffn)
        super().__init__(cfg.input_size, d, *args, cfg.blocks, cfg.kernel_size, cfg.shift)
        self.tp_encoders = nn.ModuleList(
            SANMEncoderLayer(d, d, *args, cfg.kernel_size, cfg.shift) for _ in range(cfg.tp_blocks)
        )
        self.tp_norm = layer_norm(d)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = LN_EPS

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """feats: (B, T, F) right-padded, lengths: (B,) -> (B, T, d); rows past an item's
        length are not meaningful."""
        x = super().forward(feats, lengths)  # ... after_norm
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]
        for layer in self.tp_encoders:
            x = layer(x, valid)
        return self.tp_norm(x)


class CTCHead(nn.Module):
    """funasr's CTC module at inference: log_softmax(ctc_lo(h))."""

    def __init__(self, d: int, vocab_size: int) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(d, vocab_size)

    def forward(self, h: Tensor) -> Tensor:
        """h: (B, T, d) -> log-probabilities (B, T, V), float32."""
        return F.log_softmax(self.ctc_lo(h).float(), dim=-1)


@dataclass
class Recognition:
    """What `SenseVoiceSmall.recognize` computed for a batch (the intermediates are for parity).
    Frame 0..3 of each item are the query frames; the features' frames follow."""

    encoder_out: Tensor  # (B, 4 + T, d)
    lengths: Tensor  # (B,) 4 + frames
    logprobs: Tensor  # (B, 4 + T, V) float32
    ids: list[list[int]]  # greedy CTC: repeats collapsed, blank dropped


def query_ids(language: str = "auto", use_itn: bool = False) -> tuple[int, int]:
    """(language query, text-norm query) embedding rows; language: auto or a code of
    `LANGUAGE_QUERIES`."""
    if language not in LANGUAGE_QUERIES:
        known = ", ".join(LANGUAGE_QUERIES)
        raise ValueError(f"SenseVoice has no language query {language!r} (one of {known})")
    return LANGUAGE_QUERIES[language], TEXTNORM_QUERIES["withitn" if use_itn else "woitn"]


class SenseVoiceSmall(nn.Module):
    def __init__(self, cfg: SenseVoiceConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.embed_rows, cfg.input_size)
        self.encoder = SenseVoiceEncoder(cfg)
        self.ctc = CTCHead(cfg.d_model, cfg.vocab_size)
        self.encoder_calls = 0  # batched encoder runs (tests count them)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a FunASR state dict (keys as in model.pt); every weight must be there."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the config: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )

    def prepend_queries(
        self, feats: Tensor, lengths: Tensor, lid: Tensor, textnorm: Tensor
    ) -> tuple[Tensor, Tensor]:
        """feats: (B, T, F), lengths: (B,), lid/textnorm: (B,) embedding rows ->
        x: (B, 4 + T, F) = [embed(lid), embed(1), embed(2), embed(textnorm), feats], 4 + lengths."""
        B = feats.shape[0]
        fixed = torch.tensor(EVENT_EMOTION_QUERIES, device=feats.device).expand(B, 2)
        rows = torch.cat([lid[:, None], fixed, textnorm[:, None]], dim=1)  # (B, 4)
        q = self.embed(rows).to(feats.dtype)  # (B, 4, F)
        return torch.cat([q, feats], dim=1), lengths + NUM_QUERIES

    @torch.inference_mode()
    def recognize(
        self,
        feats: Tensor,
        lengths: Tensor,
        language: str | Sequence[str] = "auto",
        use_itn: bool | Sequence[bool] = False,
    ) -> Recognition:
        """feats: (B, T, F) right-padded, lengths: (B,); language and use_itn for the whole
        batch or one per item -> a `Recognition`."""
        self.encoder_calls += 1
        B = feats.shape[0]
        languages = [language] * B if isinstance(language, str) else list(language)
        itns = [use_itn] * B if isinstance(use_itn, bool) else list(use_itn)
        if len(languages) != B or len(itns) != B:
            raise ValueError("one language and one use_itn per item")
        rows = torch.tensor(
            [query_ids(lang, itn) for lang, itn in zip(languages, itns, strict=True)],
            device=feats.device,
        )  # (B, 2)
        dtype = self.encoder.after_norm.weight.dtype
        x, n = self.prepend_queries(feats.to(dtype), lengths, rows[:, 0], rows[:, 1])
        h = self.encoder(x, n)  # (B, 4 + T, d)
        logprobs = self.ctc(h)  # (B, 4 + T, V)
        return Recognition(h, n, logprobs, greedy_ctc(logprobs, n, self.config.blank_id))


def greedy_ctc(logprobs: Tensor, lengths: Tensor, blank_id: int = 0) -> list[list[int]]:
    """Per item: argmax of each frame up to its length, repeats collapsed
    (`unique_consecutive`), then blanks dropped. logprobs: (B, T, V), lengths: (B,)."""
    B, T, _ = logprobs.shape
    best = logprobs.argmax(-1)  # (B, T)
    valid = torch.arange(T, device=best.device)[None, :] < lengths[:, None]
    new = F.pad(best[:, 1:] != best[:, :-1], (1, 0), value=True)  # differs from the frame before
    keep = (valid & new & (best != blank_id)).tolist()
    best_rows = best.tolist()
    return [
        [i for i, k in zip(row, ks, strict=True) if k]
        for row, ks in zip(best_rows, keep, strict=True)
    ]


# ---- rich tags ---------------------------------------------------------------------------------

# The tag names of SenseVoiceSmall's vocabulary, by kind (funasr's postprocess_utils lists them).
EMOTIONS = frozenset(
    {"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"}
)
EVENTS = frozenset(
    {"Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing",
     "Speech_Noise", "Event_UNK", "GBG"}
)  # fmt: skip
TEXTNORMS = frozenset(TEXTNORM_QUERIES)
_TAG = re.compile(r"<\|([^|<>]*)\|>")
_LANGUAGE = re.compile(r"[a-z]{2,3}|nospeech")


@dataclass(frozen=True)
class RichText:
    """A decoded SenseVoice text, split: the transcript and the first tag of each kind."""

    text: str  # every `<|...|>` tag removed, stripped
    language: str | None = None  # e.g. "zh", "en", "nospeech"
    emotion: str | None = None  # e.g. "NEUTRAL", "HAPPY", "EMO_UNKNOWN"
    event: str | None = None  # e.g. "Speech", "BGM", "Event_UNK"
    textnorm: str | None = None  # "withitn" or "woitn"

    def tags(self) -> dict[str, str]:
        """The tags found, by kind: {"language": "zh", "emotion": "NEUTRAL", ...}."""
        kinds = ("language", "emotion", "event", "textnorm")
        return {k: v for k in kinds if (v := getattr(self, k)) is not None}


def tag_kind(name: str) -> str | None:
    """The kind of a tag name: NEUTRAL -> emotion, Speech -> event, woitn -> textnorm, zh ->
    language; None for others."""
    if name in EMOTIONS:
        return "emotion"
    if name in EVENTS:
        return "event"
    if name in TEXTNORMS:
        return "textnorm"
    return "language" if _LANGUAGE.fullmatch(name) else None


def parse_rich(raw: str) -> RichText:
    """`<|zh|><|NEUTRAL|><|Speech|><|woitn|>你好` -> RichText("你好", "zh", "NEUTRAL", "Speech",
    "woitn"). Tags may stand anywhere (the first of a kind counts); all are removed from the
    text, known or not."""
    found: dict[str, str] = {}
    for name in _TAG.findall(raw):
        kind = tag_kind(name)
        if kind is not None:
            found.setdefault(kind, name)
    return RichText(_TAG.sub("", raw).strip(), **found)
