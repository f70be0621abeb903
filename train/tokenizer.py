"""The demo model's tokenizer: a byte-level BPE trained on the transcripts, in Qwen3-ASR's layout.

Same special tokens, chat template, pre-tokenizer and side files as the released Qwen3-ASR
checkpoints (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `chat_template.json`,
`preprocessor_config.json`), only a small vocabulary: the layout is the one
tests/fixtures/make_qwen3_asr_tokenizer.py defines for the tiny test checkpoint, imported from
there so that there is one definition of it. The production loader (engine/tokenizer.py) reads
the folder as it reads a released one.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from tokenizers import pre_tokenizers, trainers

from engine.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
LAYOUT_SCRIPT = ROOT / "tests" / "fixtures" / "make_qwen3_asr_tokenizer.py"
# BPE entries + the added tokens. Small pieces (3.2 a word) are learnt from the audio far sooner
# than whole words: after 10 CPU minutes of CTC (train/README.md) a 512 table wrote the audio's
# sounds where a 2048 one still wrote nothing, and 3.2 pieces a word still fit the encoder's
# 12.5 tokens a second at all but the fastest rates.
VOCAB_SIZE = 512
# Prompt and answer text the BPE should see whole, besides the transcripts.
EXTRA_CORPUS = ["system\n", "user\n", "assistant\n", "language English\n", "language None\n"]
ANSWER_PREFIX = "language English<asr_text>"  # what the model writes before the transcript
SILENCE_ANSWER = "language None<asr_text>"  # what it writes for audio without speech


def layout() -> ModuleType:
    """tests/fixtures/make_qwen3_asr_tokenizer.py (added tokens, template, configs, helpers)."""
    spec = importlib.util.spec_from_file_location("make_qwen3_asr_tokenizer", LAYOUT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_bpe(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> tuple[dict[str, int], list]:
    """A byte-level BPE over the texts; vocab_size counts the added tokens too."""
    lay = layout()
    qwen3 = lay.load_qwen3_tokenizer_script()
    tok = qwen3._base_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(lay.ADDED_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*texts, *EXTRA_CORPUS * 100], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def write_tokenizer(out: Path, texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Trains the BPE and writes the five tokenizer/processor files; returns the loaded result."""
    lay = layout()
    qwen3 = lay.load_qwen3_tokenizer_script()
    vocab, merges = train_bpe(texts, vocab_size)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("BPE ids must be dense")
    out.mkdir(parents=True, exist_ok=True)
    qwen3._write_json(out / "vocab.json", vocab, indent=None)
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )
    qwen3._write_json(out / "tokenizer_config.json", lay.tokenizer_config(len(vocab)))
    qwen3._write_json(out / "chat_template.json", {"chat_template": lay.QWEN3_ASR_CHAT_TEMPLATE})
    qwen3._write_json(out / "preprocessor_config.json", lay.PREPROCESSOR_CONFIG)
    return Tokenizer.from_folder(out)


TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
)
