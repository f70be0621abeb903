"""engine.tokenizer: both loading paths, special tokens, EOS ids, and Qwen3's chat template.

The tokenizers are tiny byte-level BPEs trained here with the `tokenizers` library, in the layout
Qwen ships (Qwen-style added tokens after the learned vocabulary), saved both as `tokenizer.json`
and as `vocab.json` + `merges.txt`.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from engine.tokenizer import QWEN_SPLIT, ChatTemplateError, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
# Qwen3's chat template as on the hub now, and as first released (2025-04; no `is string` checks).
QWEN3_TEMPLATE = (FIXTURES / "qwen3_chat_template.jinja").read_text(encoding="utf-8")
QWEN3_TEMPLATE_2504 = (FIXTURES / "qwen3_chat_template_2504.jinja").read_text(encoding="utf-8")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst "
    "of times; the streaming server answered every question in less than a second.\n",
    "Speech recognition turns audio into text. A chat model answers with tokens, one at a time, "
    "and the detokenizer turns them back into words as they arrive.\n\n",
    "你好，世界！今天天气很好。我们一起去公园散步吧。语音识别和大模型。",
    "Café, naïve, façade, Ångström, über, señor, déjà vu. Привет, мир! Γειά σου κόσμε.",
    "Numbers: 3.14159, 2024-05-01, $1,000,000 and 42%. Emoji: 😀 🎉 👍 ❤️ — “quotes”.",
    "    indented code():\n\treturn x  # with tabs and   runs of spaces\r\n",
]

# (content, special) after the learned vocabulary, in id order, as in Qwen's tokenizer_config.
ADDED = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<|audio_pad|>", True),
    ("<think>", False),
    ("</think>", False),
]
ADDED_STRINGS = [content for content, _ in ADDED]


@functools.cache
def trained_backend() -> Backend:
    """Trained once; `Backend.from_str` hands out copies that can be changed."""
    return train_backend()


def train_backend(vocab_size: int = 400) -> Backend:
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer)
    for content, special in ADDED:
        token = AddedToken(content, normalized=False, special=special)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    return backend


def tokenizer_config(backend: Backend, **extra) -> dict:
    decoder = {
        str(i): {
            "content": t.content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t.special,
        }
        for i, t in backend.get_added_tokens_decoder().items()
    }
    return {
        "added_tokens_decoder": decoder,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "chat_template": QWEN3_TEMPLATE,
        **extra,
    }


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")


def make_folders(root: Path) -> tuple[Path, Path]:
    """The same tiny tokenizer twice: `json/` (tokenizer.json) and `bpe/` (vocab + merges)."""
    backend = trained_backend()
    json_dir, bpe_dir = root / "json", root / "bpe"
    eos = [backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")]
    for folder in (json_dir, bpe_dir):
        folder.mkdir(parents=True)
        write_json(folder / "tokenizer_config.json", tokenizer_config(backend))
        write_json(folder / "generation_config.json", {"eos_token_id": eos})
    backend.save(str(json_dir / "tokenizer.json"))
    backend.model.save(str(bpe_dir))
    return json_dir, bpe_dir


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    return make_folders(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def pair(folders) -> tuple[Tokenizer, Tokenizer]:
    return Tokenizer.from_folder(folders[0]), Tokenizer.from_folder(folders[1])


@pytest.fixture(scope="module")
def tok(pair) -> Tokenizer:
    return pair[1]


def expected_roundtrip(text: str) -> str:
    """What decode(encode(text)) gives: NFC (Qwen normalizes) outside the added tokens, which
    are matched on the raw text first."""
    pieces = re.split("(" + "|".join(map(re.escape, ADDED_STRINGS)) + ")", text)
    return "".join(p if p in ADDED_STRINGS else unicodedata.normalize("NFC", p) for p in pieces)


# Assigned characters only: Python and the Rust normalizer may know different Unicode versions.
chars = st.characters(exclude_categories=("Cs", "Cn"))
texts = st.lists(
    st.one_of(
        st.text(chars, max_size=12),
        st.sampled_from(
            ["😀", "👍🏽", "🇫🇷", "e\u0301", "\u0338", "中文", "  ", "\n\n", "\t", " \r\n"]
        ),
        st.sampled_from(ADDED_STRINGS),
    ),
    max_size=8,
).map("".join)


# -- loading ---------------------------------------------------------------------------------


def test_both_loading_paths_agree_on_vocabulary(pair):
    from_json, from_bpe = pair
    assert 300 <= from_json.vocab_size <= 500
    assert from_json.vocab_size == from_bpe.vocab_size
    assert from_json.backend.get_vocab() == from_bpe.backend.get_vocab()
    for content, _ in ADDED:
        assert from_json.token_to_id(content) == from_bpe.token_to_id(content) is not None
    assert from_json.special_ids == from_bpe.special_ids
    assert from_json.eos_token_ids == from_bpe.eos_token_ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_both_loading_paths_encode_and_decode_the_same(pair, text):
    from_json, from_bpe = pair
    ids = from_json.encode(text)
    assert from_bpe.encode(text) == ids
    assert from_bpe.decode(ids) == from_json.decode(ids)
    assert from_json.decode(ids) == expected_roundtrip(text)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_roundtrip_of_normalized_text_is_exact(tok, text):
    text = expected_roundtrip(text)
    assert tok.decode(tok.encode(text)) == text


def test_special_and_added_tokens(tok):
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    think = tok.token_to_id("<think>")
    ids = tok.encode("<|im_start|>user\nhi<think>x</think><|im_end|>")
    assert ids[0] == im_start and ids[-1] == im_end and think in ids
    # Added tokens sit after the learned vocabulary, as in Qwen.
    assert tok.token_to_id("<|endoftext|>") == tok.vocab_size - len(ADDED)
    assert tok.id_to_token(im_end) == "<|im_end|>"
    assert tok.token_to_id("<|no such token|>") is None
    # <think> is added but not special (as in Qwen3): skipping specials keeps it.
    assert im_start in tok.special_ids and im_end in tok.special_ids
    assert think not in tok.special_ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi<think>x</think>"
    # Added tokens are matched before NFC: ">" + U+0338 would otherwise compose to "≯".
    assert tok.decode(tok.encode("<|im_end|>\u0338")) == "<|im_end|>\u0338"
    assert tok.eos_token_ids == [im_end, tok.token_to_id("<|endoftext|>")]
    assert tok.pad_token_id == tok.token_to_id("<|endoftext|>")
    assert tok.special_tokens["eos_token"] == "<|im_end|>"
    assert "bos_token" not in tok.special_tokens  # null in the config, as in Qwen3


def test_unknown_ids_decode_to_nothing(tok):
    # Model vocabularies are padded past the tokenizer's (151936 rows for 151669 tokens).
    hi = tok.encode("hi")
    assert tok.decode([*hi, tok.vocab_size + 100, *hi]) == "hihi"


def test_a_multibyte_character_split_across_tokens_decodes_to_replacement(tok):
    ids = tok.encode("🦀")  # not in the training corpus: several byte tokens
    assert len(ids) > 1
    assert tok.decode(ids[:1]).endswith("\ufffd")
    assert tok.decode(ids) == "🦀"


def test_old_style_added_tokens_and_special_tokens_map(tmp_path):
    backend = trained_backend()
    backend.model.save(str(tmp_path))
    added = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
    write_json(tmp_path / "added_tokens.json", added)
    write_json(
        tmp_path / "special_tokens_map.json",
        {
            "eos_token": {"content": "<|endoftext|>", "special": True},
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        },
    )
    write_json(tmp_path / "config.json", {"eos_token_id": added["<|im_end|>"]})
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.vocab_size == backend.get_vocab_size()
    assert all(tok.token_to_id(c) == i for c, i in added.items())
    # Named in the map: special. Only in added_tokens.json: added but not special.
    assert added["<|im_start|>"] in tok.special_ids
    assert added["<|audio_pad|>"] not in tok.special_ids
    # No generation_config.json: the tokenizer's eos, then config.json's.
    assert tok.eos_token_ids == [added["<|endoftext|>"], added["<|im_end|>"]]
    assert tok.pad_token_id is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_generation_config_single_eos_id(tmp_path):
    json_dir, _ = make_folders(tmp_path)
    write_json(json_dir / "generation_config.json", {"eos_token_id": 7, "pad_token_id": 3})
    config = json.loads((json_dir / "tokenizer_config.json").read_text())
    del config["pad_token"]
    write_json(json_dir / "tokenizer_config.json", config)
    tok = Tokenizer.from_folder(json_dir)
    assert tok.eos_token_ids == [7]
    assert tok.pad_token_id == 3


def test_added_token_id_gap_is_an_error(tmp_path):
    _, bpe_dir = make_folders(tmp_path)
    config = json.loads((bpe_dir / "tokenizer_config.json").read_text())
    last = max(config["added_tokens_decoder"], key=int)
    config["added_tokens_decoder"][str(int(last) + 5)] = config["added_tokens_decoder"].pop(last)
    write_json(bpe_dir / "tokenizer_config.json", config)
    with pytest.raises(ValueError, match="next free id"):
        Tokenizer.from_folder(bpe_dir)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_folder(tmp_path)


# -- chat template: where it comes from ------------------------------------------------------


def folder_with_template(tmp_path: Path, **config) -> Path:
    backend = trained_backend()
    backend.save(str(tmp_path / "tokenizer.json"))
    write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|im_end|>", **config})
    return tmp_path


def test_template_list_uses_default(tmp_path):
    templates = [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "default {{ eos_token }}"},
    ]
    tok = Tokenizer.from_folder(folder_with_template(tmp_path, chat_template=templates))
    assert tok.apply_chat_template([]) == "default <|im_end|>"


def test_template_from_chat_template_json_then_jinja(tmp_path):
    folder = folder_with_template(tmp_path)
    (folder / "chat_template.jinja").write_text("from jinja")
    assert Tokenizer.from_folder(folder).apply_chat_template([]) == "from jinja"
    write_json(folder / "chat_template.json", {"chat_template": "from json"})
    assert Tokenizer.from_folder(folder).apply_chat_template([]) == "from json"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    write_json(folder / "tokenizer_config.json", {**config, "chat_template": "from config"})
    assert Tokenizer.from_folder(folder).apply_chat_template([]) == "from config"


# -- chat template: how it renders -----------------------------------------------------------


def render(template: str, **kwargs) -> str:
    backend = Backend.from_str(trained_backend().to_str())
    tok = Tokenizer(backend, {"eos_token": "<|im_end|>"}, chat_template=template)
    return tok.apply_chat_template(kwargs.pop("messages", []), **kwargs)


def test_tojson_is_plain_json_dumps():
    value = {"b": "<a & b>", "a": "°C 中文"}
    assert render("{{ x | tojson }}", x=value) == json.dumps(value, ensure_ascii=False)
    assert render("{{ x | tojson(indent=2) }}", x=value) == json.dumps(
        value, ensure_ascii=False, indent=2
    )


def test_raise_exception_and_template_errors():
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="user first"):
        render(template, messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError):  # the sandbox refuses to mutate our objects
        render("{{ messages.append(1) }}", messages=[])
    with pytest.raises(ValueError):
        render("{% if %}")


def test_globals_and_blocks():
    assert render("{{ strftime_now('%Y') | length }}") == "4"
    assert (
        render("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}")
        == "1"
    )
    assert render("a{% generation %}b{% endgeneration %}c") == "abc"
    # trim_blocks + lstrip_blocks: a block tag's line leaves no whitespace behind.
    assert render("{% if true %}\n    x\n{% endif %}\n") == "    x\n"
    assert render("{{ eos_token }}|{{ bos_token is defined }}") == "<|im_end|>|False"


# -- Qwen3's real template -------------------------------------------------------------------


@pytest.fixture(params=[QWEN3_TEMPLATE, QWEN3_TEMPLATE_2504], ids=["current", "2504"])
def qwen3(request):
    """Both versions of the template render these conversations the same way."""
    return lambda messages, **kwargs: render(request.param, messages=messages, **kwargs)


def test_qwen3_user_turn_and_generation_prompt(qwen3):
    messages = [{"role": "user", "content": "Hi"}]
    assert qwen3(messages) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert qwen3(messages, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    assert qwen3(messages, enable_thinking=True) == qwen3(messages)


def test_qwen3_enable_thinking_false_adds_an_empty_think_block(qwen3):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert qwen3(messages, enable_thinking=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_history_drops_old_reasoning(qwen3):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert qwen3(messages) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen3_final_assistant_turn_keeps_a_think_block(qwen3):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert qwen3(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
    )
    messages[1] = {"role": "assistant", "content": "Hello", "reasoning_content": "\nsay hi\n"}
    assert qwen3(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nsay hi\n</think>\n\nHello<|im_end|>\n"
    )


def test_qwen3_tools_tool_calls_and_tool_responses(qwen3):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Temperature in °C",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    assert qwen3(messages, tools=[tool]) == (
        "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with "
        "the user query.\n\nYou are provided with function signatures within <tools></tools> "
        "XML tags:\n<tools>\n"
        + json.dumps(tool, ensure_ascii=False)
        + "\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_qwen3_prompt_tokenizes_with_special_tokens(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], enable_thinking=False)
    ids = tok.encode(prompt)
    assert ids.count(tok.token_to_id("<|im_start|>")) == 2
    assert ids.count(tok.token_to_id("<think>")) == 1
    assert tok.decode(ids) == prompt


def test_qwen3_tool_call_without_content():
    call = {"function": {"name": "f", "arguments": '{"x": 1}'}}
    messages = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    assert render(QWEN3_TEMPLATE, messages=messages, add_generation_prompt=False) == (
        "<|im_start|>user\nGo<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n'
    )
    # The first release could not render a None content: that is a request error, not a crash.
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render(QWEN3_TEMPLATE_2504, messages=messages)
