"""Fun-ASR-Nano served on the rollback policy: its prompt, its segments, its worker.

The prompt is funasr 1.4.16's FunASRNano.inference (get_prompt, generate_chatml,
data_load_speech): ChatML, a system turn "You are a helpful assistant." (`sys_prompt`), a user
turn with the instruction and the audio, and the assistant turn left open:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    [请结合上下文信息，...**上下文信息：**\\n\\n\\n热词列表：[w1, w2]\\n]      (hotwords)
    语音转写[成中文][，不进行文本规整]：                    (language; itn off)
    <N audio rows><|im_end|>\\n<|im_start|>assistant\\n[<think>\\n\\n</think>\\n\\n][prefix]

The text before the audio and the text after it are tokenized separately (funasr splits the
turn at the speech markers, which never reach the tokenizer); the empty think block comes with
`dataset_conf.do_think: false`; `prefix` is funasr's `prev_text`, the rollback prefix, which the
output then starts with. Hotwords are a stream's prompt, read as a list (split at commas,
ideographic commas, semicolons and new lines); a language is a code (zh, en, ja, ... the names
the checkpoints were trained with, LANGUAGES), an English name or one of those Chinese names.
The transcript is the output with funasr's clean-up: "/sil" to spaces, runs of whitespace to
one space; stripped.

Streaming is Qwen3-ASR's rollback algorithm (engine/rollback.py, engine/asr.py): every
`step_seconds` of new audio, the whole open segment is decoded again with the previous output
minus its last `unfixed_tokens` tokens as the prefix (none for the first `unfixed_chunks`
steps), and the output equals that of the naive loop that re-runs funasr on the segment so far.
What it reuses, and what it cannot: the SenseVoice encoder and the adaptor attend over the
whole input, so every step encodes the segment again (the streams due in one step share one
batched front end and encoder call); the audio rows change with every step, so of the decoder
prompt only the part before the audio, the system turn, instruction and hotwords, is served by
the prefix cache; the text prefix after the audio is recomputed (its keys depend on the audio
before it). The audio rows carry random prefix-cache digests (they never repeat), so no step
hashes its embeddings.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from audio import fbank
from engine.asr import AsrHandle, AsrWorker, Stream
from engine.asr_prompt import CODES, Prompt
from engine.chunked import build_frontend
from engine.config import EngineConfig
from engine.engine import Engine
from engine.funasr_loader import load_state_dict, named_path, read_folder
from engine.models import model_type
from engine.models.fun_asr_nano import FunASRNano, FunASRNanoConfig
from engine.request import INTERACTIVE, InjectedEmbeds
from engine.rollback import RollbackConfig, RollbackSegment
from engine.runtime import Runtime
from engine.streaming import StreamOptions
from engine.tokenizer import Tokenizer
from engine.weights import load_safetensors
from kernels.attention import backend

SYSTEM = "You are a helpful assistant."
HOTWORD_INTRO = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n"
    "**上下文信息：**\n\n\n"
)
# Language codes -> the names of the instruction "语音转写成{name}：" (Fun-ASR's README:
# 中文, 英文, 日文 for Fun-ASR-Nano-2512; the others for Fun-ASR-MLT-Nano-2512).
LANGUAGES = {
    "zh": "中文", "en": "英文", "ja": "日文", "yue": "粤语", "ko": "韩文", "vi": "越南语",
    "id": "印尼语", "th": "泰语", "ms": "马来语", "fil": "菲律宾语", "tl": "菲律宾语",
    "ar": "阿拉伯语", "hi": "印地语", "bg": "保加利亚语", "hr": "克罗地亚语", "cs": "捷克语",
    "da": "丹麦语", "nl": "荷兰语", "et": "爱沙尼亚语", "fi": "芬兰语", "el": "希腊语",
    "hu": "匈牙利语", "ga": "爱尔兰语", "lv": "拉脱维亚语", "lt": "立陶宛语", "mt": "马耳他语",
    "pl": "波兰语", "pt": "葡萄牙语", "ro": "罗马尼亚语", "sk": "斯洛伐克语", "sl": "斯洛文尼亚语",
    "sv": "瑞典语",
}  # fmt: skip
_ENGLISH_NAMES = CODES | {
    "bulgarian": "bg", "croatian": "hr", "estonian": "et", "irish": "ga", "latvian": "lv",
    "lithuanian": "lt", "maltese": "mt", "slovak": "sk", "slovenian": "sl",
}  # fmt: skip
MIN_SAMPLES = 2  # the front end's shortest input (funasr's WavFrontend fails under it)
_HOTWORD_SPLIT = re.compile(r"[,，、;；\n]+")
_WHITESPACE = re.compile(r"\s+")


def language_option(language: str) -> tuple[str, str]:
    """A stream's language -> (code, the instruction's name): "en", "English" or "英文" ->
    ("en", "英文"); ValueError for a language no Fun-ASR-Nano checkpoint names."""
    s = language.strip()
    code = s.lower() if s.lower() in LANGUAGES else _ENGLISH_NAMES.get(s.lower())
    if code is None:
        code = next((c for c, name in LANGUAGES.items() if name == s), None)
    if code not in LANGUAGES:
        raise ValueError(f"language {language!r} is not supported by Fun-ASR-Nano")
    return code, LANGUAGES[code]


def hotword_list(text: str | None) -> list[str]:
    """A stream's prompt -> hotwords: "阿里巴巴, 通义实验室" -> ["阿里巴巴", "通义实验室"]."""
    return [w.strip() for w in _HOTWORD_SPLIT.split(text or "") if w.strip()]


def instruction(hotwords: Sequence[str] = (), language: str | None = None, itn: bool = True) -> str:
    """funasr's FunASRNano.get_prompt: the user turn's text before the audio."""
    text = HOTWORD_INTRO + f"热词列表：[{', '.join(hotwords)}]\n" if hotwords else ""
    text += f"语音转写成{language}" if language else "语音转写"
    return text + ("" if itn else "，不进行文本规整") + "："


@dataclass(frozen=True)
class PromptFormat:
    """config.yaml's dataset_conf switches of the prompt (funasr's defaults: both true)."""

    system: bool = True  # sys_prompt: the system turn
    think: bool = True  # do_think: false adds an empty think block to the assistant turn

    @classmethod
    def from_funasr(cls, config: dict[str, Any]) -> PromptFormat:
        conf = config.get("dataset_conf") or {}
        return cls(bool(conf.get("sys_prompt", True)), bool(conf.get("do_think", True)))


def build_prompt(
    tokenizer: Tokenizer,
    placeholder_id: int,
    hotwords: Sequence[str] = (),
    language: str | None = None,
    itn: bool = True,
    fmt: PromptFormat = PromptFormat(),
) -> Prompt:
    """The token ids before the audio rows and the text after them (`Prompt.ids` appends the
    rollback prefix to it before tokenizing, as funasr appends prev_text)."""
    user = f"<|im_start|>user\n{instruction(hotwords, language, itn)}"
    head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n{user}" if fmt.system else user
    tail = "<|im_end|>\n<|im_start|>assistant\n" + ("" if fmt.think else "<think>\n\n</think>\n\n")
    return Prompt(tokenizer.encode(head), tail, placeholder_id)


def clean_text(raw: str) -> str:
    """funasr's result text: "/sil" as a space, runs of whitespace as one space."""
    return _WHITESPACE.sub(" ", raw.replace("/sil", " "))


@dataclass(frozen=True)
class NanoPlan:
    """One step: the audio it covers and the text prefix (funasr's prev_text)."""

    upto: int
    final: bool
    prefix: str


class NanoSegment(RollbackSegment):
    """The open segment of one Fun-ASR-Nano stream: its audio and text state (no caches: a
    step encodes the whole segment)."""

    def __init__(
        self, prompt: Prompt, tokenizer: Tokenizer, forced: str | None, config: RollbackConfig
    ) -> None:
        super().__init__(tokenizer, config)
        self.prompt = prompt
        self.forced = forced  # a language code, or None

    def plan(self, upto: int, final: bool) -> NanoPlan:
        return NanoPlan(upto, final, self._prefix(final))

    def request(self, plan: NanoPlan, audio: Tensor) -> tuple[list[int], list[InjectedEmbeds]]:
        """audio: (N, d_llm) rows -> the prompt ids and the rows to inject."""
        at = self.prompt.audio_start()
        rows = InjectedEmbeds(at, audio, secrets.token_bytes(16))  # never repeats: no hashing
        return self.prompt.ids(self.tokenizer, audio.shape[0], plan.prefix), [rows]

    def parse(self, raw: str) -> tuple[str, str]:
        return self.forced or "", clean_text(raw).strip()

    def stable_text(self, prefix: str) -> str:
        return clean_text(prefix).strip()


class NanoWorker(AsrWorker):
    """The rollback worker (engine/asr.py) with Fun-ASR-Nano's segments and encoder: the
    streams due in a step share one front end and one encoder + adaptor call."""

    def __init__(
        self,
        model: FunASRNano,
        tokenizer: Tokenizer,
        engine: Engine,
        config: RollbackConfig,
        frontend: fbank.WavFrontend,
    ) -> None:
        super().__init__(model, tokenizer, engine, config)
        self.frontend = frontend

    def _new_segment(self, s: Stream) -> NanoSegment:
        return NanoSegment(s.prompt, self.tokenizer, s.forced, self.config)

    @staticmethod
    def _final_language(language: str) -> str | None:
        return language or None  # the forced code (the model names no language)

    def encode(self, clips: Sequence[np.ndarray]) -> list[tuple[Tensor, int]]:
        """Whole clips (16 kHz float32), batched -> per clip its audio rows (N, d_llm) and its
        LFR frames."""
        lengths = torch.tensor([c.size for c in clips])
        x = torch.zeros(len(clips), int(lengths.max()))
        for b, c in enumerate(clips):
            x[b, : c.size] = torch.from_numpy(c)
        scale = self.model.config.wave_scale / fbank.WAVE_SCALE  # fbank scales by 32768
        feats, frames = self.frontend(x.to(self.device) * scale, lengths.to(self.device))
        enc = self.model.encode(feats, frames)
        return [(enc.embeds(b), int(frames[b])) for b in range(len(clips))]

    @torch.inference_mode()
    def _launch(self, streams: list[Stream]) -> None:
        plans = []
        for s, seg, plan in self._plans(streams):
            if plan.upto < MIN_SAMPLES:  # too short for one Kaldi window: nothing to decode
                self._result(s, seg, plan, [])
                continue
            plans.append((s, seg, plan))
        if not plans:
            return
        audio = self.encode([seg.audio[: plan.upto] for _, seg, plan in plans])
        for (s, seg, plan), (rows, frames) in zip(plans, audio, strict=True):
            ids, embeds = seg.request(plan, rows)
            rid = f"nano-{next(self._ids)}"
            self.engine.add(ids, self._params(plan), rid, INTERACTIVE, embeds)
            s.in_flight = (rid, seg, plan, ids, frames)
            s.tokens = []


@dataclass
class FunASRNanoServed:
    """A served Fun-ASR-Nano (engine/streaming.py's AsrModel). Per stream: `language` (None:
    the model's default, none unless loaded with one), the prompt as hotwords, `use_itn`
    (None: the model's default, on as funasr's)."""

    name: str
    worker: NanoWorker
    language: str | None = None  # default language code
    use_itn: bool = True
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    kind: str = field(default="asr", init=False)
    hotwords: bool = field(default=True, init=False)  # FunASR clients' hotwords become the prompt

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(LANGUAGES)

    def validate(self, options: StreamOptions) -> None:
        """Raises ValueError for a language no checkpoint was trained with."""
        if options.language:
            language_option(options.language)

    def stream_prompt(self, options: StreamOptions) -> tuple[str | None, Prompt]:
        """The forced language code (or None) and the prompt of a stream with `options`."""
        code = language_option(options.language)[0] if options.language else self.language
        itn = self.use_itn if options.use_itn is None else bool(options.use_itn)
        prompt = build_prompt(
            self.worker.tokenizer,
            self.worker.model.config.placeholder_id,
            hotword_list(options.prompt),
            LANGUAGES[code] if code else None,
            itn,
            self.prompt_format,
        )
        return code, prompt

    def open_stream(self, options: StreamOptions) -> AsrHandle:
        forced, prompt = self.stream_prompt(options)
        return AsrHandle(self.worker, {"forced": forced, "prompt": prompt})


def build_fun_asr_nano(
    path: Path, config: EngineConfig, audio_dtype: torch.dtype = torch.float32
) -> tuple[FunASRNano, Tokenizer, fbank.WavFrontend, PromptFormat]:
    """The model, its tokenizer (EOS: where the reference stops), front end and prompt format,
    from a FunASR folder or a transformers "-hf" folder. The LLM runs in `config.dtype`, the
    encoder and the adaptor in `audio_dtype` (float32, as funasr runs them)."""
    if model_type(path) == "fun_asr_nano":
        cfg = FunASRNanoConfig.from_hf_folder(path)
        weights = load_safetensors(path, device=config.device)
        tokenizer = Tokenizer.from_folder(path)
        frontend = fbank.WavFrontend(n_mels=cfg.encoder.input_size // fbank.LFR_M)
        fmt = PromptFormat()
    else:
        folder = read_folder(path)
        llm_dir = named_path(folder, "llm_conf", "init_param_path", "Qwen3-0.6B")
        if llm_dir is None or not (llm_dir / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no LLM folder with a config.json (llm_conf)")
        llm_config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
        cfg = FunASRNanoConfig.from_funasr(folder.config, llm_config)
        weights = load_state_dict(folder.weights, device=config.device)
        tok_dir = named_path(folder, "tokenizer_conf", "init_param_path") or llm_dir
        tokenizer = Tokenizer.from_folder(tok_dir)
        frontend = build_frontend(folder.config.get("frontend_conf") or {}, folder.cmvn)
        fmt = PromptFormat.from_funasr(folder.config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(config.dtype)
    try:
        with torch.device(config.device):
            model = FunASRNano(cfg, backend(config.attention_backend, config.device))
    finally:
        torch.set_default_dtype(default)
    model.audio_encoder.to(audio_dtype)
    model.audio_adaptor.to(audio_dtype)
    model.load_weights(weights)
    model.eval()
    if cfg.eos_token_ids:
        tokenizer.eos_token_ids = list(cfg.eos_token_ids)
    return model, tokenizer, frontend, fmt


def load_fun_asr_nano(
    path: Path,
    name: str,
    performance_mode: str = "balanced",
    runtime: Runtime | None = None,
    rollback: RollbackConfig | None = None,
    language: str | None = None,
    use_itn: bool = True,
    audio_dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> FunASRNanoServed:
    """The served model on the rollback policy. `language` (a code or name; None: none) and
    `use_itn` are the defaults of streams that do not set their own."""
    config = EngineConfig.for_mode(performance_mode, **overrides)
    model, tokenizer, frontend, fmt = build_fun_asr_nano(path, config, audio_dtype)
    engine = Engine(model.llm, tokenizer, config)
    worker = NanoWorker(model, tokenizer, engine, rollback or RollbackConfig(), frontend)
    worker.runtime = runtime or Runtime(name=f"asr-{name}")
    worker.runtime.add(worker)
    code = language_option(language)[0] if language else None
    return FunASRNanoServed(name, worker, code, use_itn, fmt)
