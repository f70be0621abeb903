"""Text <-> token ids for a Hugging Face model folder, and the folder's chat template.

`Tokenizer.from_folder` reads `tokenizer.json` with the `tokenizers` library. A folder that only
has `vocab.json` + `merges.txt` (Qwen3-ASR ships that way) gets a Qwen2-style byte-level BPE built
from `tokenizers` parts. Added and special tokens, EOS ids and the chat template come from the usual
side files (`tokenizer_config.json`, `added_tokens.json`, `special_tokens_map.json`,
`generation_config.json`, `config.json`, `chat_template.json`, `chat_template.jinja`).

Chat templates render the way transformers renders them (sandboxed Jinja with `trim_blocks` and
`lstrip_blocks`, `raise_exception`, `strftime_now`, a non-escaping `tojson`), so prompts match
the ones the model was trained on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

# Qwen2's pre-tokenizer split (Qwen2.5 and Qwen3 use the same): contractions, letter runs with one
# leading non-letter, single digits, punctuation runs, newline runs, then other whitespace.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The named special tokens of a transformers tokenizer; templates see them as variables.
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class ChatTemplateError(ValueError):
    """No chat template, or the template could not render the conversation."""


class Tokenizer:
    """A `tokenizers` tokenizer plus what transformers keeps beside it: named special tokens,
    EOS and pad ids, and the chat template."""

    def __init__(
        self,
        backend: Backend,
        special_tokens: dict[str, Any] | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        # Named special tokens: {"eos_token": "<|im_end|>", "additional_special_tokens": [...]}.
        self.special_tokens: dict[str, Any] = dict(special_tokens or {})
        self.eos_token_ids: list[int] = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.chat_template = chat_template
        self.special_ids: set[int] = {
            i for i, token in backend.get_added_tokens_decoder().items() if token.special
        }
        for content in _special_contents(self.special_tokens):
            token_id = backend.token_to_id(content)
            if token_id is not None:
                self.special_ids.add(token_id)

    @classmethod
    def from_folder(cls, path: Path | str) -> Tokenizer:
        folder = Path(path)
        config = _read_json(folder / "tokenizer_config.json")
        special_tokens = _named_special_tokens(
            config, _read_json(folder / "special_tokens_map.json")
        )
        backend = _load_backend(folder)
        _add_tokens(backend, _added_tokens(folder, config, special_tokens))
        generation = _read_json(folder / "generation_config.json")
        model_config = _read_json(folder / "config.json")
        return cls(
            backend,
            special_tokens,
            eos_token_ids=_eos_ids(backend, special_tokens, generation, model_config),
            pad_token_id=_pad_id(backend, special_tokens, generation, model_config),
            chat_template=_find_chat_template(folder, config),
        )

    # -- tokens ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        # Skip by our own set: it also covers named special tokens the backend did not mark.
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(ids, skip_special_tokens=False)

    # -- chat --------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation to prompt text; extra kwargs (`enable_thinking`...) go to the
        template. Encode the result with `add_special_tokens=False`: the template has them."""
        if self.chat_template is None:
            raise ChatTemplateError(
                "this tokenizer has no chat template (looked for tokenizer_config.json "
                "'chat_template', chat_template.json and chat_template.jinja)"
            )
        variables = {**self.special_tokens, **kwargs}
        try:
            return _compile(self.chat_template).render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except ChatTemplateError:
            raise
        except Exception as e:
            # Whatever a template trips over (a None content, a missing key) is the request's
            # fault as far as the server goes: one error type, for a 400.
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


# -- loading ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _load_backend(folder: Path) -> Backend:
    if (folder / "tokenizer.json").is_file():
        return Backend.from_file(str(folder / "tokenizer.json"))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return byte_level_bpe(folder / "vocab.json", folder / "merges.txt")
    raise FileNotFoundError(f"{folder}: no tokenizer.json, and no vocab.json + merges.txt")


def byte_level_bpe(vocab: Path, merges: Path) -> Backend:
    """A Qwen2-style byte-level BPE: what transformers builds for `Qwen2TokenizerFast`."""
    vocab_map, merge_list = models.BPE.read_file(str(vocab), str(merges))
    backend = Backend(models.BPE(vocab_map, merge_list, unk_token=None, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            # The split above already did the regex work; no prefix space, as in Qwen.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _content(token: Any) -> str | None:
    """A token as written in the config files: a string, or an AddedToken dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _named_special_tokens(config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, Any]:
    """bos/eos/pad/... and additional_special_tokens; tokenizer_config.json wins over
    special_tokens_map.json, which only fills the names it leaves unset."""
    named: dict[str, Any] = {}
    for source in (special_map, config):
        for name in SPECIAL_TOKEN_NAMES:
            content = _content(source.get(name))
            if content is not None:
                named[name] = content
        extra = source.get("additional_special_tokens")
        if extra:
            named["additional_special_tokens"] = [c for c in map(_content, extra) if c is not None]
    return named


def _special_contents(named: dict[str, Any]) -> list[str]:
    contents = [named[n] for n in SPECIAL_TOKEN_NAMES if n in named]
    return contents + list(named.get("additional_special_tokens", []))


def _added_tokens(
    folder: Path, config: dict[str, Any], named: dict[str, Any]
) -> list[tuple[int | None, AddedToken]]:
    """Tokens the side files add on top of the model vocabulary, as (id or None, token)."""
    special = set(_special_contents(named))
    found: dict[str, tuple[int | None, AddedToken]] = {}
    for key, spec in config.get("added_tokens_decoder", {}).items():
        found[spec["content"]] = (
            int(key),
            AddedToken(
                spec["content"],
                single_word=spec.get("single_word", False),
                lstrip=spec.get("lstrip", False),
                rstrip=spec.get("rstrip", False),
                normalized=spec.get("normalized", not spec.get("special", False)),
                special=spec.get("special", False),
            ),
        )
    for content, token_id in _read_json(folder / "added_tokens.json").items():
        if content not in found:
            is_special = content in special
            token = AddedToken(content, normalized=not is_special, special=is_special)
            found[content] = (int(token_id), token)
    # Named special tokens the vocabulary lacks get new ids, as transformers does.
    for content in special:
        if content not in found:
            found[content] = (None, AddedToken(content, normalized=False, special=True))
    return sorted(found.values(), key=lambda item: (item[0] is None, item[0] or 0))


def _add_tokens(backend: Backend, tokens: list[tuple[int | None, AddedToken]]) -> None:
    for token_id, token in tokens:
        known = backend.token_to_id(token.content)
        if known is None and token_id is not None:
            next_id = backend.get_vocab_size(with_added_tokens=True)
            # `tokenizers` numbers added tokens itself, one after another; a gap cannot be kept.
            if token_id != next_id:
                raise ValueError(
                    f"added token {token.content!r} wants id {token_id}, "
                    f"but the next free id is {next_id}"
                )
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        got = backend.token_to_id(token.content)
        if token_id is not None and got != token_id:
            raise ValueError(f"added token {token.content!r} has id {got}, expected {token_id}")


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ids))


def _named_id(backend: Backend, named: dict[str, Any], name: str) -> int | None:
    content = named.get(name)
    return None if content is None else backend.token_to_id(content)


def _eos_ids(backend: Backend, named: dict, generation: dict, model_config: dict) -> list[int]:
    """generation_config.json's, as generate() uses; else the tokenizer's and config.json's."""
    if generation.get("eos_token_id") is not None:
        return _unique(_as_ids(generation["eos_token_id"]))
    eos = _named_id(backend, named, "eos_token")
    ids = [] if eos is None else [eos]
    return _unique(ids + _as_ids(model_config.get("eos_token_id")))


def _pad_id(backend: Backend, named: dict, generation: dict, model_config: dict) -> int | None:
    pad = _named_id(backend, named, "pad_token")
    if pad is not None:
        return pad
    for source in (generation, model_config):
        if isinstance(source.get("pad_token_id"), int):
            return source["pad_token_id"]
    return None


# -- chat template ---------------------------------------------------------------------------


def _find_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = _pick_template(config.get("chat_template"))
    if template is None:
        template = _pick_template(_read_json(folder / "chat_template.json").get("chat_template"))
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template


def _pick_template(value: Any) -> str | None:
    """A template string, or the "default" one of a list of {name, template}."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in value:
            if item.get("name") == "default":
                return item["template"]
    return None


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes and sorts keys; templates expect plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for serving it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[Any]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)
