"""Word error rate: word-level edit distance over normalized text (lowercase, no punctuation)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes inside words kept)."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace(" '", " ").split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Substitutions + deletions + insertions turning ref into hyp (Levenshtein)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Corpus WER of (reference, hypothesis) pairs: total edits over total reference words."""
    edits = words = 0
    for ref, hyp in pairs:
        r = normalize(ref)
        edits += edit_distance(r, normalize(hyp))
        words += len(r)
    return edits / max(words, 1)
