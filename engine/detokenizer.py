"""Token ids -> text deltas, while a request is generating.

`IncrementalDetokenizer.push(ids)` returns only the text the new ids add. Byte-level BPE splits
multi-byte characters across tokens, and a partial character decodes to U+FFFD, so trailing
replacement characters are held back until the character completes (or `flush()` ends the stream).
Each push decodes a small window (a few already-emitted tokens for context, then the new ones), so
its cost does not grow with the length of the output.

Stop strings cut the stream where the first of them starts (the first to complete, if several
could), even across pushes: text that could be the start of a stop string is held back until it
is clearly not one, so nothing after a stop string is ever returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.tokenizer import Tokenizer

# Already-emitted tokens decoded in front of the new ones: merges, leading spaces and
# sentencepiece-style word starts decode differently at the very start of a sequence.
CONTEXT_TOKENS = 5
# A UTF-8 character has at most 3 bytes before its last one. Decoders give at most one U+FFFD
# per byte, so at most the last 3 can still turn into a real character.
MAX_PARTIAL = 3
# Once the window is this long, drop its front (only then: trimming costs extra decodes).
MAX_WINDOW_TOKENS = 16
# A partial character followed by this many tokens is given up on (see `_trim`).
MAX_HELD_WINDOW_TOKENS = 64

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stop = StopStrings(stop)
        # The prompt's last tokens are the first context; a character the prompt leaves
        # unfinished stays held, and is emitted if generation completes it.
        self._window = self._text_tokens(prompt_ids)[-(CONTEXT_TOKENS + MAX_PARTIAL) :]
        self._text = self._decode(self._window)  # the text of the whole window
        self._emitted = len(self._text) - _held(self._text)  # chars of `_text` already out

    @property
    def stopped(self) -> str | None:
        """The stop string that ended the stream, or None."""
        return self._stop.stopped

    def push(self, token_ids: Sequence[int]) -> str:
        if self.stopped is not None:
            return ""
        token_ids = self._text_tokens(token_ids)
        if not token_ids:
            return ""
        self._window.extend(token_ids)
        self._text = self._decode(self._window)
        end = len(self._text) - _held(self._text)
        new = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        if len(self._window) > MAX_WINDOW_TOKENS:
            new += self._trim()
        return self._stop.feed(new)

    def flush(self) -> str:
        """The end of the stream: everything still held, replacement characters included."""
        if self.stopped is not None:
            return ""
        rest = self._text[self._emitted :]
        self._emitted = len(self._text)
        return self._stop.feed(rest) + self._stop.flush()

    def _text_tokens(self, ids: Sequence[int]) -> list[int]:
        """`ids` without the special tokens that decode to nothing. Keeping them out of the
        window keeps a partial character's bytes together, and leaves room for context."""
        ids = [int(i) for i in ids]
        if not self.skip_special_tokens:
            return ids
        return [i for i in ids if i not in self.tokenizer.special_ids]

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _trim(self) -> str:
        """Drop the window's front, keeping CONTEXT_TOKENS before the tokens still held.
        Returns held text it had to give up on (almost always nothing)."""
        if self._emitted == len(self._text):
            self._restart()
            return ""
        # Held characters come from the last MAX_PARTIAL tokens (each token adds a byte), so the
        # text before them is final: cut there, if the cut does not split a character.
        cut = len(self._window) - MAX_PARTIAL
        head = self._decode(self._window[:cut])
        start = cut - CONTEXT_TOKENS
        window = self._window[start:]
        text = self._decode(window)
        context = self._decode(self._window[start:cut])
        # The shorter window must render the held tail exactly as the long one did.
        if (
            len(head) <= self._emitted
            and self._text.startswith(head)
            and text[len(context) :] == self._text[len(head) :]
        ):
            self._window, self._text = window, text
            self._emitted = len(context) + (self._emitted - len(head))
        elif len(self._window) > MAX_HELD_WINDOW_TOKENS:
            # Tokens that add no bytes (skipped special tokens) after a partial character: the
            # stream is not text any more, and a bounded cost matters more than holding it.
            rest = self._text[self._emitted :]
            self._restart()
            return rest
        return ""

    def _restart(self) -> None:
        """Everything is out: keep only the context for the next decode."""
        self._window = self._window[-CONTEXT_TOKENS:]
        self._text = self._decode(self._window)
        self._emitted = len(self._text)


def _held(text: str) -> int:
    """How many trailing characters may still change: the run of U+FFFD at the end, capped."""
    run = len(text) - len(text.rstrip(REPLACEMENT))
    return min(run, MAX_PARTIAL)


class StopStrings:
    """Cuts a stream of text deltas before the first stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stops = [s for s in stop if s]
        self.stopped: str | None = None
        self._held = ""  # the longest tail of the stream that starts some stop string

    def feed(self, text: str) -> str:
        if self.stopped is not None:
            return ""
        if not self.stops:
            return text
        # Any stop string that ends in `text` starts inside `_held + text`: a longer start
        # would have been held.
        text = self._held + text
        hit = self._first(text)
        if hit is not None:
            self.stopped = hit[1]
            self._held = ""
            return text[: hit[0]]
        keep = self._partial(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The stream ended: a held partial stop string was not one after all."""
        out, self._held = self._held, ""
        return "" if self.stopped is not None else out

    def _first(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the stop string that completes first; on a tie, the longest.

        First to complete, not first to start: that is where generation stops, and it does not
        depend on how the text was split into pushes."""
        hits = []
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                hits.append((at + len(stop), at, stop))
        if not hits:
            return None
        _, at, stop = min(hits)
        return at, stop

    def _partial(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
