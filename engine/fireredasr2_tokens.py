"""FireRedASR's `dict.txt` and its ids -> text, as fireredasr2's ChineseCharEnglishSpmTokenizer
decodes them (tokenizer/aed_tokenizer.py, data/token_dict.py).

dict.txt has one `token id` line per token, ids in order from 0 (<blank> <unk> <pad> <sos>
<eos>, then Chinese characters, then the upper-case English SentencePiece pieces); a line with
one field takes its line number as id, an empty line is the token " ", and `<space>` is read as
" ". Decoding joins the tokens, turns "▁" into spaces and strips the ends, then removes
`<blank>` and `<sil>` and lower-cases (FireRedAsr2.transcribe). The SentencePiece model is only
needed to encode text, which serving never does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SPM_SPACE = "\u2581"
_DROPPED = re.compile(r"(<blank>)|(<sil>)")


class FireRedTokens:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens

    @classmethod
    def from_file(cls, path: str | Path) -> FireRedTokens:
        tokens: list[str] = []
        for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
            fields = line.split()
            token, index = (fields[0], int(fields[1])) if len(fields) >= 2 else (" ", i)
            if len(fields) == 1:
                token = fields[0]
            if index != len(tokens):
                raise ValueError(f"{path}:{i + 1}: id {index}, expected {len(tokens)}")
            tokens.append(" " if token == "<space>" else token)
        return cls(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def joined(self, ids: Iterable[int]) -> str:
        """The tokens joined, "▁" as spaces, stripped (the package's `detokenize`)."""
        return "".join(self.tokens[i] for i in ids).replace(SPM_SPACE, " ").strip()

    def text(self, ids: Iterable[int]) -> str:
        """A hypothesis' transcript."""
        return _DROPPED.sub("", self.joined(ids)).lower()
