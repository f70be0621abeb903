"""Token timestamps of an attention decoder's hypothesis from the CTC head: forced alignment
(torchaudio.functional.forced_align), as FireRedASR2-AED's `return_timestamp=True` gives them
(fireredasr2 FireRedAsrAed.get_token_timestamp_torchaudio and FireRedAsr2._get_and_fix_timestamp).

1. Align the hypothesis (its <blank> ids dropped) to the segment's CTC log-probs. A token
   starts at the end of the first encoder frame it is aligned to (40 ms frames: frame k starts
   the token at 0.04 (k + 1)); it ends where the next token starts, the last at the segment's
   end (0.04 T + 0.025). An end more than twice the mean token length after its start is
   pulled in to max(1.5 mean, the token's aligned run + 1 frame).
2. Shift everything 60 ms earlier, clamp to [0, duration] (a start also to the previous end).
   When the alignment is impossible (more tokens, with their repeats, than frames) the
   duration is split evenly over the tokens instead.
3. Nudge starts (and ends, but the last) that sit at the very end of the audio 1 ms apart.
4. Merge SentencePiece word pieces: a piece opening with "▁" absorbs the plain-letter pieces
   after it, so English comes out in words.
Tokens are dict.txt's, lower-cased; times are seconds from the segment's start.
"""

from __future__ import annotations

import re

import torch
import torchaudio.functional as AF
from torch import Tensor

from engine.fireredasr2_tokens import SPM_SPACE, FireRedTokens

FRAME_MS = 10
SUBSAMPLING = 4
SHIFT = 0.06
END_MS = 25  # the last frame's window reaches 25 ms past its start
_WORD_PIECE = re.compile(r"^[a-zA-Z']+$")

Stamp = tuple[str, float, float]


def aligned_times(log_probs: Tensor, ids: list[int], blank: int = 0) -> tuple[list, list] | None:
    """(starts, ends) in seconds of the non-blank ids, or None when they cannot be aligned to
    the T frames of log_probs (T, V)."""
    y = [i for i in ids if i != blank]
    repeats = sum(a == b for a, b in zip(y, y[1:], strict=False))
    T = log_probs.shape[0]
    if not y or T == 0 or len(y) + repeats > T:
        return None
    target = torch.tensor([y], dtype=torch.int32, device=log_probs.device)
    path, _ = AF.forced_align(log_probs[None].float(), target, blank=blank)
    frames = path[0].tolist()
    starts: list[float] = []
    ends: list[float] = []
    runs: list[float] = []
    t = 0
    while t < T:
        token = frames[t]
        t += 1
        if token == blank:
            continue
        first = t
        starts.append(FRAME_MS * SUBSAMPLING * t / 1000.0)
        if len(starts) == len(ends) + 2:
            ends.append(starts[-1])
        while t < T and frames[t] == token:
            t += 1
        runs.append((t - first + 1) * FRAME_MS * SUBSAMPLING / 1000.0)
    ends.append((FRAME_MS * SUBSAMPLING * T + END_MS) / 1000.0)
    mean = sum(e - s for s, e in zip(starts, ends, strict=True)) / len(ends)
    fixed = []
    for s, e, run in zip(starts, ends, runs, strict=True):
        if e - s > 2 * mean:
            e = s + max(1.5 * mean, run)
        fixed.append(round(e, 3))
    return starts, fixed


def token_timestamps(
    log_probs: Tensor, ids: list[int], duration: float, tokens: FireRedTokens
) -> list[Stamp]:
    """The hypothesis' (token or word, start, end) list; see the module docstring."""
    names = [tokens.tokens[i].lower() for i in ids]
    times = aligned_times(log_probs, ids)
    stamps: list[list] = []
    last_end = duration
    if times is None:
        step = duration / len(ids) if ids else 0.0
        for i, name in enumerate(names):
            start = min(max(0.0, i * step), last_end)
            last_end = end = min((i + 1) * step, duration)
            stamps.append([name, round(start, 3), round(end, 3)])
    else:
        for name, s, e in zip(names, *times, strict=False):
            start = min(max(0.0, s - SHIFT), last_end)
            last_end = end = min(max(0.0, e - SHIFT), duration)
            stamps.append([name, round(start, 3), round(end, 3)])
    for i in range(len(stamps)):
        stamp = stamps[-(i + 1)]
        if abs(duration - stamp[1]) < 0.001:
            stamp[1] = duration - (i + 1) * 0.001
        if i != 0 and abs(duration - stamp[2]) < 0.001:
            stamp[2] = duration - i * 0.001
    return merge_word_pieces(stamps)


def merge_word_pieces(stamps: list[list]) -> list[Stamp]:
    out: list[Stamp] = []
    i = 0
    while i < len(stamps):
        name, start, end = stamps[i]
        i += 1
        if name.startswith(SPM_SPACE):
            name = name.replace(SPM_SPACE, "")
            while i < len(stamps) and _WORD_PIECE.match(stamps[i][0]):
                name += stamps[i][0]
                end = stamps[i][2]
                i += 1
        out.append((name, start, end))
    return out
