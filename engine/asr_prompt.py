"""Qwen3-ASR's text side: the prompt around the audio, the output format, the rollback prefix.

The prompt is the chat template over a system message (the optional context) and a user message
holding the audio, whose single `<|audio_pad|>` is expanded to one pad per audio token; a forced
language appends `language X<asr_text>`. The model answers `language X<asr_text>TEXT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.tokenizer import Tokenizer

ASR_TEXT = "<asr_text>"
AUDIO_PAD = "<|audio_pad|>"
_LANG_PREFIX = "language "

# ISO 639-1 codes of the languages Qwen3-ASR names in its output.
LANGUAGES = {
    "zh": "Chinese", "en": "English", "yue": "Cantonese", "ar": "Arabic", "de": "German",
    "fr": "French", "es": "Spanish", "pt": "Portuguese", "id": "Indonesian", "it": "Italian",
    "ko": "Korean", "ru": "Russian", "th": "Thai", "vi": "Vietnamese", "ja": "Japanese",
    "tr": "Turkish", "hi": "Hindi", "ms": "Malay", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "fi": "Finnish", "pl": "Polish", "cs": "Czech", "fil": "Filipino", "tl": "Filipino",
    "fa": "Persian", "el": "Greek", "hu": "Hungarian", "mk": "Macedonian", "ro": "Romanian",
}  # fmt: skip
CODES = {name.lower(): code for code, name in LANGUAGES.items()}


def language_name(language: str, supported: Sequence[str] = ()) -> str:
    """`en` or `english` -> `English`; refuses languages the model does not list."""
    s = language.strip()
    name = LANGUAGES.get(s.lower()) or s[:1].upper() + s[1:].lower()
    if supported and name not in supported or not supported and name.lower() not in CODES:
        raise ValueError(f"language {language!r} is not supported by this model")
    return name


def language_code(name: str) -> str | None:
    return CODES.get(name.lower()) if name else None


@dataclass(frozen=True)
class Prompt:
    """Token ids before and after the audio pads; the middle is `n` pads filled by the encoder."""

    head: list[int]  # ... <|audio_start|>
    tail_text: str  # <|audio_end|> ... assistant\n [language X<asr_text>]
    pad_id: int

    def ids(self, tokenizer: Tokenizer, n_audio: int, prefix: str = "") -> list[int]:
        return self.head + [self.pad_id] * n_audio + tokenizer.encode(self.tail_text + prefix)

    def audio_start(self) -> int:
        return len(self.head)


def build_prompt(tokenizer: Tokenizer, context: str = "", language: str | None = None) -> Prompt:
    messages = [
        {"role": "system", "content": context or ""},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if language:
        text += f"{_LANG_PREFIX}{language}{ASR_TEXT}"
    if text.count(AUDIO_PAD) != 1:
        raise ValueError("the chat template must render exactly one <|audio_pad|>")
    before, after = text.split(AUDIO_PAD)
    pad_id = tokenizer.token_to_id(AUDIO_PAD)
    if pad_id is None:
        raise ValueError("the tokenizer has no <|audio_pad|> token")
    return Prompt(tokenizer.encode(before), after, pad_id)


def rollback(tokenizer: Tokenizer, raw: str, k: int, final: bool = False) -> str:
    """The text prefix for the next step: the previous output minus its last k tokens.

    Steps back further while the cut splits a character (the official rule); the final pass
    keeps at least one token and does not step back (also the official rule)."""
    ids = tokenizer.encode(raw)
    if final:
        return tokenizer.decode(ids[: max(1, len(ids) - k)])
    while True:
        end = max(0, len(ids) - k)
        prefix = tokenizer.decode(ids[:end]) if end else ""
        if "\ufffd" not in prefix or end == 0:
            return prefix if "\ufffd" not in prefix else ""
        k += 1


def parse_output(raw: str, forced: str | None = None) -> tuple[str, str]:
    """`language X<asr_text>TEXT` -> (X, TEXT); ("", "") for silence; forced: all is text."""
    s = fix_repetitions(raw.strip()) if raw else ""
    if not s:
        return "", ""
    if forced:
        return forced, s
    if ASR_TEXT not in s:
        return "", s.strip()
    meta, text = s.split(ASR_TEXT, 1)
    if "language none" in meta.lower():
        return "", text.strip()
    language = ""
    for line in meta.splitlines():
        line = line.strip()
        if line.lower().startswith(_LANG_PREFIX):
            value = line[len(_LANG_PREFIX) :].strip()
            if value:
                language = value[:1].upper() + value[1:].lower()
            break
    return language, text.strip()


def text_of_prefix(prefix: str, forced: str | None) -> str:
    """The transcript part of a rollback prefix (what the next step cannot change)."""
    if forced:
        return prefix.lstrip()
    return prefix.split(ASR_TEXT, 1)[1].lstrip() if ASR_TEXT in prefix else ""


def fix_repetitions(text: str, threshold: int = 20, max_len: int = 20) -> str:
    """Collapse a character or a short pattern repeated more than `threshold` times (the model
    sometimes loops); the same rule as the official package."""
    return _fix_patterns(_fix_char_runs(text, threshold), threshold, max_len)


def _fix_char_runs(s: str, threshold: int) -> str:
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] if j - i > threshold else s[i:j])
        i = j
    return "".join(out)


def _fix_patterns(s: str, threshold: int, max_len: int) -> str:
    if len(s) < 2 * threshold:
        return s
    out = []
    for i in range(len(s) - 2 * threshold + 1):
        for k in range(1, max_len + 1):
            if i + k * threshold > len(s):
                break
            pattern = s[i : i + k]
            if all(s[i + r * k : i + (r + 1) * k] == pattern for r in range(1, threshold)):
                end = i + threshold * k
                while s[end : end + k] == pattern:
                    end += k
                return "".join(out) + pattern + _fix_patterns(s[end:], threshold, max_len)
        out.append(s[i])
    return "".join(out) + s[len(s) - 2 * threshold + 1 :]
