"""engine.detokenizer: streamed text equals the full decode, never shows a broken character, stays
cheap per push, and stops before stop strings without leaking what follows them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenizer import MAX_WINDOW_TOKENS, IncrementalDetokenizer, StopStrings
from engine.tokenizer import Tokenizer
from tests.test_tokenizer import ADDED_STRINGS, make_folders

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_folder(make_folders(tmp_path_factory.mktemp("tok"))[1])


def stream(detok: IncrementalDetokenizer, ids: list[int], sizes: list[int] = ()) -> list[str]:
    """Push `ids` in groups of the given sizes (then one by one); the last piece is flush()."""
    pieces, at = [], 0
    sizes = list(sizes)
    while at < len(ids):
        size = sizes.pop(0) if sizes else 1
        pieces.append(detok.push(ids[at : at + size]))
        at += size
    pieces.append(detok.flush())
    return pieces


def byte_token(tok: Tokenizer, byte: int) -> int:
    """The id of the single-byte token for `byte` (byte-level alphabet)."""
    for i in range(tok.vocab_size):
        token = tok.id_to_token(i)
        if token is not None and len(token) == 1 and _byte_of(token) == byte:
            return i
    raise KeyError(byte)


def _byte_of(char: str) -> int:
    # GPT-2's byte-level alphabet: printable Latin-1 bytes map to themselves, the rest to U+0100+.
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    return table[char]


# -- streaming equals decoding ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_ids_stream_to_the_full_decode(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=120))
    sizes = data.draw(st.lists(st.integers(1, 6), max_size=30))
    skip = data.draw(st.booleans())
    pieces = stream(IncrementalDetokenizer(tok, skip_special_tokens=skip), ids, sizes)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(pieces) == full
    if REPLACEMENT not in full:
        assert not any(REPLACEMENT in piece for piece in pieces)


texts = st.lists(
    st.one_of(
        st.text(max_size=10),
        st.sampled_from(["🦀", "👍🏽", "🇫🇷", "中文字", "é", "  ", "\n"]),
        st.sampled_from(ADDED_STRINGS),
    ),
    max_size=10,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts, data=st.data())
def test_text_streams_back_whole_characters(tok, text, data):
    ids = tok.encode(text)
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=40))
    skip = data.draw(st.booleans())
    pieces = stream(IncrementalDetokenizer(tok, skip_special_tokens=skip), ids, sizes)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    if REPLACEMENT not in text:
        assert not any(REPLACEMENT in piece for piece in pieces)


def test_emoji_split_across_tokens_arrives_whole(tok):
    assert len(tok.encode("🦀")) == 3  # F0 9F is a learned merge; A6 and 80 stay single bytes
    text = "I like 🦀 and 👍🏽."
    pieces = stream(IncrementalDetokenizer(tok), tok.encode(text))
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)
    # " ", F0 9F | A6 | 80: the space comes out at once, the crab once its last byte is in.
    crab = pieces.index("🦀")
    assert pieces[crab - 2 : crab] == [" ", ""]


def test_prompt_is_context_not_output(tok):
    prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    answer = tok.encode(" Hello world, 你好!<|im_end|>")
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
    assert "".join(stream(detok, answer)) == " Hello world, 你好!"
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt, skip_special_tokens=False)
    assert "".join(stream(detok, answer)) == " Hello world, 你好!<|im_end|>"


def test_a_character_the_prompt_leaves_unfinished_is_emitted_when_completed(tok):
    ids = tok.encode("ab 🦀 cd")
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith(REPLACEMENT))
    detok = IncrementalDetokenizer(tok, prompt_ids=ids[:cut])
    assert "".join(stream(detok, ids[cut:])) == "🦀 cd"


def test_flush_emits_a_partial_character(tok):
    lead = byte_token(tok, 0xE4)  # the first of three bytes
    detok = IncrementalDetokenizer(tok)
    assert detok.push(tok.encode("ok ")) == "ok "
    assert detok.push([lead]) == ""
    assert detok.flush() == REPLACEMENT


def test_a_partial_character_survives_skipped_special_tokens(tok):
    e4, b8, ad = (byte_token(tok, b) for b in (0xE4, 0xB8, 0xAD))
    end = tok.token_to_id("<|im_end|>")
    ids = [e4, *[end] * 100, b8, ad]
    assert tok.decode(ids, skip_special_tokens=True) == "中"
    assert "".join(stream(IncrementalDetokenizer(tok), ids)) == "中"


# -- cost per push ---------------------------------------------------------------------------


def test_window_stays_small(tok):
    text = "The streaming server answers 你好 and 🦀 quickly. " * 200
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    out = []
    for token in ids:
        out.append(detok.push([token]))
        assert len(detok._window) <= MAX_WINDOW_TOKENS
    assert "".join(out) + detok.flush() == text


def test_window_stays_small_on_invalid_bytes(tok):
    # Lone continuation bytes: each is a final U+FFFD, but the text always ends in one.
    ids = [byte_token(tok, 0x80)] * 500 + tok.encode("a")
    detok = IncrementalDetokenizer(tok)
    out = []
    for token in ids:
        out.append(detok.push([token]))
        assert len(detok._window) <= MAX_WINDOW_TOKENS
    assert "".join(out) + detok.flush() == tok.decode(ids)


# -- stop strings ----------------------------------------------------------------------------


def run_stop(tok, text: str, stop: list[str], **kwargs) -> tuple[list[str], str | None]:
    detok = IncrementalDetokenizer(tok, stop=stop, **kwargs)
    pieces = stream(detok, tok.encode(text))
    return pieces, detok.stopped


def test_stop_string_cuts_before_it(tok):
    pieces, stopped = run_stop(tok, "Hello world. STOP and more text", ["STOP"])
    assert "".join(pieces) == "Hello world. "
    assert stopped == "STOP"


def test_nothing_after_a_stop_leaks(tok):
    detok = IncrementalDetokenizer(tok, stop=["\n\n"])
    out = "".join(detok.push([t]) for t in tok.encode("one\n\ntwo three"))
    assert out == "one" and detok.stopped == "\n\n"
    assert detok.push(tok.encode("four")) == ""
    assert detok.flush() == ""


def test_stop_spanning_pushes_is_held_then_cut(tok):
    detok = IncrementalDetokenizer(tok, stop=["Human:"])
    assert detok.push(tok.encode("Sure. Hu")) == "Sure. "
    assert detok.push(tok.encode("ma")) == ""
    assert detok.push(tok.encode("n: next")) == ""
    assert detok.stopped == "Human:"


def test_held_prefix_is_released_when_it_is_not_a_stop(tok):
    detok = IncrementalDetokenizer(tok, stop=["Human:"])
    assert detok.push(tok.encode("Sure. Hu")) == "Sure. "
    assert detok.push(tok.encode("mans are")) == "Humans are"
    assert detok.push(tok.encode(" Hum")) == " "
    assert detok.flush() == "Hum"
    assert detok.stopped is None


def test_first_stop_to_complete_wins(tok):
    # "c" and "b c" complete together: the longer one, which starts earlier, wins.
    pieces, stopped = run_stop(tok, "a b c d", ["d", "c", "b c"])
    assert "".join(pieces) == "a "
    assert stopped == "b c"
    # "bc" completes before "abcd" could, however the text is pushed.
    for sizes in ([1, 1, 1, 1], [4]):
        detok = IncrementalDetokenizer(tok, stop=["abcd", "bc"])
        pieces = stream(detok, [tok.token_to_id(c) for c in "abcd"], sizes)
        assert "".join(pieces) == "a" and detok.stopped == "bc"


def first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Where a stream of `text` stops: the stop string that completes first, longest on ties."""
    hits = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    return min(hits)[1:] if hits else None


def test_stop_on_special_token_text(tok):
    text = "answer<|im_end|><|im_start|>user"
    pieces, stopped = run_stop(tok, text, ["<|im_end|>"], skip_special_tokens=False)
    assert "".join(pieces) == "answer" and stopped == "<|im_end|>"


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.text("ab c", max_size=5), max_size=12),
    stops=st.lists(st.text("ab c", min_size=1, max_size=4), max_size=3),
)
def test_stop_strings_never_leak(chunks, stops):
    full = "".join(chunks)
    hit = first_stop(full, stops)
    expected = full[: hit[0]] if hit else full
    matcher, out = StopStrings(stops), ""
    for chunk in chunks:
        out += matcher.feed(chunk)
        assert expected.startswith(out)
    out += matcher.flush()
    assert out == expected
    assert matcher.stopped == (hit[1] if hit else None)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text("ab c中🦀", max_size=40),
    stops=st.lists(st.text("ab c中🦀", min_size=1, max_size=3), max_size=3),
    sizes=st.lists(st.integers(1, 4), max_size=40),
)
def test_stop_strings_on_tokens(tok, text, stops, sizes):
    hit = first_stop(text, stops)
    expected = text[: hit[0]] if hit else text
    detok = IncrementalDetokenizer(tok, stop=stops)
    ids, out = tok.encode(text), ""
    for piece in stream(detok, ids, sizes):
        out += piece
        assert expected.startswith(out)
    assert out == expected
    assert detok.stopped == (hit[1] if hit else None)
