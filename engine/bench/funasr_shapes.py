"""Random-weight FunASR folders in the released shapes of Paraformer-large (offline and
streaming) and SenseVoiceSmall, for `rtserve bench asr --model DIR` and its funasr baseline.

    python -m engine.bench.funasr_shapes paraformer-large /tmp/paraformer-large
    python -m engine.bench.funasr_shapes paraformer-large-streaming /tmp/paraformer-streaming
    python -m engine.bench.funasr_shapes sensevoice-small /tmp/sensevoice-small

Each folder holds what funasr's AutoModel and our loader read: config.yaml (the released
model, encoder, decoder, predictor and front-end settings, model-families.md 2.1-2.3),
configuration.json, am.mvn (Kaldi nnet text; a plausible log-mel mean and scale), model.pt
(float32, seeded, scaled by fan-in) and the tokens: Paraformer's 8404-entry character list
(tokens.json: <blank>, <s>, </s>, CJK characters, <unk>), SenseVoice's 25055-piece SentencePiece
model (a character model trained here on CJK and Hangul characters, with the rich tags as
user symbols). The streaming folder's encoder_conf chunk settings shape only the training masks
(inference takes its chunks from the call: [0, 10, 5]); the released values are not public.

Compute follows the token count, so the random Paraformer is set to fire a realistic number of
tokens: the CIF's output layer is near zero and its bias puts every frame's weight at
`CIF_TOKENS_PER_SECOND` / 16.7 frames per second, so the decoder runs over ~4 tokens per second
of audio, as it would on speech.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from engine.models.paraformer import Paraformer, ParaformerConfig
from engine.models.sensevoice import (
    EMOTIONS,
    EVENTS,
    LANGUAGE_QUERIES,
    TEXTNORMS,
    SenseVoiceConfig,
    SenseVoiceSmall,
)

SHAPES = ("paraformer-large", "paraformer-large-streaming", "sensevoice-small")
PARAFORMER_VOCAB = 8404
SENSEVOICE_VOCAB = 25055  # model-families.md 2.3: the count that gives the README's 234 M
BPE_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
CIF_TOKENS_PER_SECOND = 4.0
LFR_FRAMES_PER_SECOND = 1000 / 60
FRONTEND = {
    "fs": 16000,
    "window": "hamming",
    "n_mels": 80,
    "frame_length": 25,
    "frame_shift": 10,
    "lfr_m": 7,
    "lfr_n": 6,
    "dither": 0.0,  # funasr's default is 1.0 (noise): the outputs must be deterministic
}
SANM = {
    "output_size": 512,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 50,
    "input_layer": "pe",
    "pos_enc_class": "SinusoidalPositionEncoder",
    "normalize_before": True,
    "kernel_size": 11,
    "sanm_shfit": 0,
    "selfattention_layer_type": "sanm",
}
PARAFORMER: dict[str, Any] = {
    "model": "Paraformer",
    "model_conf": {
        "ctc_weight": 0.0,
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
    },
    "encoder": "SANMEncoder",
    "encoder_conf": SANM,
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 16,
        "att_layer_num": 16,
        "kernel_size": 11,
        "sanm_shfit": 0,
    },
    "predictor": "CifPredictorV2",
    "predictor_conf": {
        "idim": 512,
        "threshold": 1.0,
        "l_order": 1,
        "r_order": 1,
        "tail_threshold": 0.45,
    },
    "frontend": "WavFrontend",
    "frontend_conf": FRONTEND,
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
}
STREAMING_CHUNKS = {
    "chunk_size": [12, 15],
    "stride": [8, 10],
    "pad_left": [0, 0],
    "encoder_att_look_back_factor": [4, 4],
    "decoder_att_look_back_factor": [1, 1],
}
SENSEVOICE: dict[str, Any] = {
    "encoder": "SenseVoiceEncoderSmall",
    "encoder_conf": SANM | {"tp_blocks": 20},
    "model": "SenseVoiceSmall",
    "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
    "tokenizer": "SentencepiecesTokenizer",
    "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
    "frontend": "WavFrontend",
    "frontend_conf": FRONTEND | {"cmvn_file": None},
}


def released_config(shape: str) -> dict[str, Any]:
    """config.yaml's content for one of SHAPES (a copy: the tests shrink it)."""
    if shape == "sensevoice-small":
        return copy.deepcopy(SENSEVOICE)
    config = copy.deepcopy(PARAFORMER)
    if shape == "paraformer-large-streaming":
        config["model"] = "ParaformerStreaming"
        config["encoder"] = "SANMEncoderChunkOpt"
        config["encoder_conf"] |= {"input_layer": "pe_online"} | STREAMING_CHUNKS
        config["decoder_conf"]["sanm_shfit"] = 5  # a causal FSMN memory in the decoder
        config["frontend"] = "WavFrontendOnline"  # funasr's chunked front end
    elif shape != "paraformer-large":
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    return config


def configuration_json(sensevoice: bool) -> dict[str, Any]:
    """configuration.json: funasr joins these paths to the folder."""
    metas: dict[str, Any] = {"init_param": "model.pt", "config": "config.yaml"}
    metas["frontend_conf"] = {"cmvn_file": "am.mvn"}
    metas["tokenizer_conf"] = (
        {"bpemodel": BPE_FILE} if sensevoice else {"token_list": "tokens.json"}
    )
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "file_path_metas": metas,
    }


def am_mvn(dim: int = 560, n_mels: int = 80) -> str:
    """am.mvn in Kaldi's nnet text layout: AddShift (minus a log-mel mean) and Rescale (an
    inverse standard deviation), per mel bin, tiled over the LFR frames."""
    k = np.arange(n_mels) / (n_mels - 1)
    shift = np.tile(-(11.0 + 6.0 * np.sqrt(k)), dim // n_mels)
    scale = np.tile(0.3 - 0.1 * np.sqrt(k), dim // n_mels)

    def vector(v: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{x:.6f}" for x in v) + " ]"

    lines = ["<Nnet>", f"<Splice> {dim} {dim}", "[ 0 ]", f"<AddShift> {dim} {dim}"]
    lines += [vector(shift), f"<Rescale> {dim} {dim}", vector(scale), "</Nnet>"]
    return "\n".join(lines) + "\n"


def char_tokens(vocab: int) -> list[str]:
    """Paraformer's token list: blank, sos, eos, CJK characters, unk last (as released)."""
    chars = [chr(0x4E00 + i) for i in range(vocab - 4)]
    return ["<blank>", "<s>", "</s>", *chars, "<unk>"]


def rich_tags() -> list[str]:
    names = sorted(set(LANGUAGE_QUERIES) | EMOTIONS | EVENTS | TEXTNORMS)
    return [f"<|{n}|>" for n in names]


def sentencepiece_model(vocab: int) -> bytes:
    """A character SentencePiece model of exactly `vocab` pieces: <unk> (the CTC blank), <s>,
    </s>, the rich tags, then CJK and Hangul characters."""
    import sentencepiece as spm

    tags = rich_tags()
    n_chars = vocab - 3 - len(tags)
    chars = [chr(0x4E00 + i) for i in range(min(n_chars, 20992))]
    chars += [chr(0xAC00 + i) for i in range(n_chars - len(chars))]
    lines = ["".join(chars[i : i + 64]) for i in range(0, len(chars), 64)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="char",
        vocab_size=vocab,
        character_coverage=1.0,
        user_defined_symbols=tags,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights: norms near 1, small biases, matrices scaled by 1/sqrt(fan-in)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():  # parameters only: buffers are computed
        w = torch.randn(p.shape, generator=g)
        if name.endswith("bias"):
            w = 0.02 * w
        elif p.ndim == 1:
            w = 1.0 + 0.1 * w
        else:
            w /= math.sqrt(float(np.prod(p.shape[1:])))
        state[name] = w
    return state


def write(
    shape: str, folder: Path, seed: int = 0, config: dict[str, Any] | None = None, vocab=None
) -> Path:
    """A FunASR folder of `shape` (or of `config` and `vocab`: the tests shrink them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config or released_config(shape)
    sensevoice = config["model"] == "SenseVoiceSmall"
    dim = config["frontend_conf"]["n_mels"] * config["frontend_conf"]["lfr_m"]
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "configuration.json").write_text(json.dumps(configuration_json(sensevoice), indent=2))
    (folder / "am.mvn").write_text(am_mvn(dim, config["frontend_conf"]["n_mels"]))
    if sensevoice:
        vocab = vocab or SENSEVOICE_VOCAB
        (folder / BPE_FILE).write_bytes(sentencepiece_model(vocab))
        state = _randomize(SenseVoiceSmall(SenseVoiceConfig.from_funasr(config, vocab)), seed)
    else:
        vocab = vocab or PARAFORMER_VOCAB
        (folder / "tokens.json").write_text(json.dumps(char_tokens(vocab), ensure_ascii=False))
        cfg = ParaformerConfig.from_funasr(config, vocab)
        state = _randomize(Paraformer(cfg), seed)
        _realistic_cif(state)
        # training-only target embeddings: funasr builds them, our model does not
        d = config["encoder_conf"]["output_size"]
        g = torch.Generator().manual_seed(seed + 1)
        state["decoder.embed.0.weight"] = torch.randn(vocab, d, generator=g)
    torch.save(state, str(folder / "model.pt"))
    return folder


def _realistic_cif(state: dict[str, torch.Tensor]) -> None:
    """Every frame weighs about CIF_TOKENS_PER_SECOND / LFR_FRAMES_PER_SECOND tokens."""
    alpha = CIF_TOKENS_PER_SECOND / LFR_FRAMES_PER_SECOND
    state["predictor.cif_output.weight"] *= 0.5
    state["predictor.cif_output.bias"].fill_(math.log(alpha / (1 - alpha)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shape", choices=SHAPES)
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write(a.shape, a.folder, a.seed))


if __name__ == "__main__":
    main()
