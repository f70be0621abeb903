"""The transcript contract, enforced per segment: stable text only grows, deltas add up.

Models promise that stable text never changes (engine/streaming.py). This keeps the promise on the
wire even if a model slips: a partial whose stable text does not extend what was already sent is
repaired, and the final transcript always starts with the stable text sent before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Update:
    delta: str  # newly stable text, to append to what was sent
    stable: str
    unstable: str
    revision: int
    repaired: bool  # the model broke the contract and this update was mended


class SegmentTranscript:
    def __init__(self) -> None:
        self.stable = ""
        self.revision = 0

    def partial(self, stable: str, unstable: str) -> Update:
        full = stable + unstable
        repaired = not stable.startswith(self.stable)
        if repaired:
            stable = self.stable
            unstable = full[len(stable) :] if full.startswith(stable) else unstable
        return self._advance(stable, unstable, repaired)

    def final(self, text: str) -> Update:
        repaired = not text.startswith(self.stable)
        if repaired:
            text = self.stable + text[len(os.path.commonprefix([self.stable, text])) :]
        return self._advance(text, "", repaired)

    def _advance(self, stable: str, unstable: str, repaired: bool) -> Update:
        delta = stable[len(self.stable) :]
        self.stable = stable
        self.revision += 1
        return Update(delta, stable, unstable, self.revision, repaired)
