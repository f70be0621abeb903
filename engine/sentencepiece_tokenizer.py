"""A SentencePiece model's text side: token ids -> text, as funasr's `SentencepiecesTokenizer`.

funasr 1.4.16 (tokenizer/sentencepiece_tokenizer.py) decodes with the `sentencepiece` library's
`DecodeIds`, and so does this: pieces are concatenated, `▁` becomes a space and the one at the
very start is dropped, control pieces (`<s>`, `</s>`) vanish, `<unk>` prints ` ⁇ `, and
user-defined pieces (SenseVoice's `<|zh|>`, `<|NEUTRAL|>`, ...) print as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm


class SentencePieceTokens:
    """A `.bpe.model` (or any SentencePiece model): decode ids, look pieces up."""

    def __init__(self, model: bytes) -> None:
        self.sp = spm.SentencePieceProcessor(model_proto=model)

    @classmethod
    def from_file(cls, path: Path) -> SentencePieceTokens:
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.piece(i) for i in ids]

    def id_of(self, piece: str) -> int | None:
        """The id of a piece, or None when the model has no such piece."""
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece else None

    def text(self, ids: Iterable[int]) -> str:
        """ids -> text (`SentencepiecesTokenizer.decode`)."""
        return self.sp.decode([int(i) for i in ids])

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)
