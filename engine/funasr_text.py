"""FunASR's text side for char-token models (Paraformer): ids -> tokens -> text.

`CharTokens` is the token list (tokens.json / tokens.txt, `CharTokenizer.ids2tokens`).
`sentence_postprocess` turns a list of tokens into text exactly as funasr 1.4.16's
`funasr.utils.postprocess_utils.sentence_postprocess` does (without timestamps):

1. drop `<s>`, `</s>`, `<unk>`, `<OOV>`;
2. if every token is "Chinese", join them (spaces removed from each);
   if every token is "alphabetic", each token is a word: words joined by spaces;
   otherwise (mixed): Chinese tokens are appended as they are (removing the space a preceding
   English word left), a token with `@@` is a word piece (the `@@` dropped, kept pending until an
   alphabetic token completes the word; a pending piece before a Chinese token is not flushed,
   it prefixes the next word), an alphabetic token completes the pending word, followed by a
   space, and anything else is appended as it is;
3. runs of single ASCII letters separated by spaces ("a b c") become one upper-case word ("ABC");
4. join and strip.

"Chinese" and "alphabetic" follow funasr's tests to the letter, quirks included: a token counts
as Chinese when it compares, as a whole string, between U+4E00 and U+9FFF or between "0" and "9",
or is "@" (so "中国", "12" and even "1a" are Chinese); a word list counts as all-alphabetic
when each token, with spaces and the special tokens removed, is `str.isalpha()` (or is "'")
and not Chinese.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

SKIPPED = ("<s>", "</s>", "<unk>", "<OOV>")


class CharTokens:
    """The model's token list: id -> token string."""

    def __init__(self, tokens: Sequence[str], unk: str = "<unk>") -> None:
        self.tokens = list(tokens)
        self.unk = unk

    @classmethod
    def from_file(cls, path: Path) -> CharTokens:
        """tokens.json (a JSON list) or tokens.txt (one token a line)."""
        if path.suffix == ".json":
            return cls(json.loads(path.read_text(encoding="utf-8")))
        return cls([line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()])

    def __len__(self) -> int:
        return len(self.tokens)

    def tokens_of(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] if 0 <= i < len(self.tokens) else self.unk for i in ids]

    def text(self, ids: Iterable[int]) -> str:
        return sentence_postprocess(self.tokens_of(ids))

    def has_cjk(self) -> bool:
        """Whether the vocabulary holds CJK characters (a Chinese model)."""
        return any(len(t) == 1 and "\u4e00" <= t <= "\u9fff" for t in self.tokens)


def _strip_special(token: str) -> str:
    for s in (" ", "</s>", "<s>", "<unk>", "<OOV>"):
        token = token.replace(s, "")
    return token


def _is_chinese(s: str) -> bool:
    """funasr's isChinese, applied to whole strings: a lexicographic comparison."""
    return "\u4e00" <= s <= "\u9fff" or "0" <= s <= "9" or s == "@"


def _all_chinese(items: Iterable[str]) -> bool:
    """funasr's isAllChinese: over a token list, or over the characters of one token."""
    cleaned = [_strip_special(i) for i in items]
    return bool(cleaned) and all(_is_chinese(c) for c in cleaned)


def _all_alpha(items: Iterable[str]) -> bool:
    """funasr's isAllAlpha: over a token list, or over the characters of one token."""
    cleaned = [_strip_special(i) for i in items]
    if not cleaned:
        return False
    return all((c.isalpha() or c == "'") and not (c.isalpha() and _is_chinese(c)) for c in cleaned)


def _single_letter(word: str) -> bool:
    return len(word) == 1 and word.isascii() and word.isalpha()


def _join_abbreviations(words: list[str]) -> list[str]:
    """funasr's abbr_dispose (no timestamps): "a", " ", "b", " ", "c" -> "ABC"."""
    n = len(words)
    spans: dict[int, int] = {}  # first letter -> last letter of a run
    i = 0
    while i < n:
        if (
            _single_letter(words[i])
            and i + 2 < n
            and words[i + 1] == " "
            and _single_letter(words[i + 2])
        ):
            end = i + 2
            while end + 2 < n and words[end + 1] == " " and _single_letter(words[end + 2]):
                end += 2
            spans[i] = end
            # funasr resumes its scan after the run only when the run is longer than two letters
            i = end + 1 if end > i + 2 else i + 1
            continue
        i += 1
    out: list[str] = []
    i = 0
    while i < n:
        if i in spans:
            end = spans[i]
            out.append("".join(w.upper() for w in words[i : end + 1] if w != " "))
            i = end + 1
        else:
            out.append(words[i])
            i += 1
    return out


def sentence_postprocess(tokens: Iterable[str | bytes]) -> str:
    """Tokens -> text, as funasr's `sentence_postprocess(tokens)[0]`."""
    kept = [t.decode("utf-8") if isinstance(t, bytes) else t for t in tokens]
    kept = [t for t in kept if t not in SKIPPED]
    words: list[str] = []
    if _all_chinese(kept):
        words = [t.replace(" ", "") for t in kept]
    elif _all_alpha(kept):
        for t in kept:  # (a token with "@@" is never all-alphabetic: each is a word)
            words += [t, " "]
    else:
        pending, after_word = "", False
        for t in kept:
            if _all_chinese(t):
                if after_word:
                    words.pop()
                words.append(t)
                after_word = False
            elif "@@" in t:
                pending += t.replace("@@", "")
                after_word = False
            elif _all_alpha(t):
                words += [pending + t, " "]
                pending, after_word = "", True
            else:
                words.append(t)
    return "".join(_join_abbreviations(words)).strip()
