"""FireRedASR2-AED at the released shape (1.15 B parameters, random weights): our model against
the official fireredasr2 code, in one process, on the same weights and the same features. Ours
twice: the dense batched beam search (engine/aed_beam_search.py) and the served one on the
paged engine (engine/aed_engine_search.py: beams as forked requests).

Offline throughput: `--batch` utterances of `--seconds` (lengths spread over 0.6..1.0 of it,
random CMVN-like features), encoder + batched beam search (beam `--beam`, the package's
softmax smoothing 1.25, length penalty 0.6; at most `--max-len` tokens: random weights rarely
say <eos>, so both sides decode that many steps). Per side: encoder ms, beam-search ms, total,
audio seconds per wall second; for ours, how many 1-best hypotheses are the official's token for
token (float32: all should be; bfloat16 rounds differently on each side) and the speedup.

The official code is imported from its package folder (`--reference`, the `fireredasr2` folder
of fasr-asr-firered 0.5.8) without its `__init__`, so its front-end dependencies (kaldiio,
kaldi-native-fbank) are not needed: only its model modules run.

    python3 bench/fireredasr2_aed.py --reference .venv-ref/lib/python3.11/site-packages/fireredasr2

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.aed_beam_search import BeamSettings, beam_search  # noqa: E402
from engine.aed_engine_search import aed_engine, engine_beam_search  # noqa: E402
from engine.models.fireredasr2 import FireRedAed, FireRedConfig, checkpoint_key  # noqa: E402


def official_model_class(folder: Path) -> type:
    """fireredasr2.models.fireredasr_aed.FireRedAsrAed, its package __init__ skipped."""
    package = types.ModuleType("fireredasr2")
    package.__path__ = [str(folder)]
    sys.modules["fireredasr2"] = package
    return importlib.import_module("fireredasr2.models.fireredasr_aed").FireRedAsrAed


def released_args(cfg: FireRedConfig) -> argparse.Namespace:
    return argparse.Namespace(
        idim=cfg.idim, odim=cfg.odim, d_model=cfg.d_model, n_head=cfg.n_head,
        n_layers_enc=cfg.n_layers_enc, n_layers_dec=cfg.n_layers_dec,
        kernel_size=cfg.kernel_size, pe_maxlen=cfg.pe_maxlen, residual_dropout=0.1,
        dropout_rate=0.1, sos_id=cfg.sos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id,
    )  # fmt: skip


def random_state(model: FireRedAed, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the checkpoint's key names (LayerNorms near 1, matrices ~ 1/sqrt(fan
    in), a few nonzero position biases), with the positional tables and the tied projection."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        key = checkpoint_key(name)
        if name in ("encoder.rel_pe", "decoder.pe"):
            state[key] = t[None].clone()
            continue
        noise = torch.randn(t.shape, generator=g)
        if t.dim() == 1:
            value = (1.0 + 0.1 * noise) if "norm" in name else 0.02 * noise
        else:
            value = noise / (t[0].numel() ** 0.5)
        state[key] = value
    state["decoder.tgt_word_prj.weight"] = state["decoder.tgt_word_emb.weight"]
    return state


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, required=True, help="the fireredasr2 package folder")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true", help="a 4-layer d=256 model (smoke test)")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = FireRedConfig()
    if a.small:
        cfg = FireRedConfig(d_model=256, n_head=4, n_layers_enc=4, n_layers_dec=4, odim=1000)
    ours = FireRedAed(cfg)
    state = random_state(ours, seed=0)
    ours.load_weights(state)
    ours.to(device, dtype).eval()
    theirs = official_model_class(a.reference)(released_args(cfg))
    theirs.load_state_dict(state, strict=False)
    theirs.to(device, dtype).eval()
    del state
    params = sum(t.numel() for t in ours.parameters())

    g = torch.Generator().manual_seed(1)
    frames = int(a.seconds * 100)
    lengths = (frames * (0.6 + 0.4 * torch.rand(a.batch, generator=g))).long()
    lengths[0] = frames
    feats = torch.randn(a.batch, frames, cfg.idim, generator=g)
    feats = torch.where(torch.arange(frames)[None, :, None] < lengths[:, None, None], feats, 0.0)
    feats, lengths = feats.to(device, dtype), lengths.to(device)
    settings = BeamSettings(beam_size=a.beam, max_len=a.max_len)

    def run_ours() -> tuple[list[list[int]], float, float]:
        (enc, enc_lengths), t_enc = timed(lambda: ours.encoder(feats, lengths), device)
        hyps, t_search = timed(
            lambda: beam_search(ours.decoder, enc, enc_lengths, settings), device
        )
        return [h[0].ids for h in hyps], t_enc, t_search

    engine = aed_engine(ours, kv_cache_fraction=0.25)  # leave room for the official decode

    def run_engine() -> tuple[list[list[int]], float, float]:
        (enc, enc_lengths), t_enc = timed(lambda: ours.encoder(feats, lengths), device)
        hyps, t_search = timed(
            lambda: engine_beam_search(engine, enc, enc_lengths, settings), device
        )
        return [h[0].ids for h in hyps], t_enc, t_search

    def run_official() -> tuple[list[list[int]], float, float]:
        (enc, _, mask), t_enc = timed(lambda: theirs.encoder(feats, lengths), device)
        hyps, t_search = timed(
            lambda: theirs.decoder.batch_beam_search(
                enc, mask, a.beam, 1, a.max_len, 1.25, 0.6, 1.0
            ),
            device,
        )
        return [[int(i) for i in h[0]["yseq"]] for h in hyps], t_enc, t_search

    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": a.dtype, "parameters_m": round(params / 1e6, 1), "batch": a.batch,
        "seconds": a.seconds, "beam": a.beam, "max_len": a.max_len,
        "audio_seconds": round(float(lengths.sum()) / 100, 2),
    }  # fmt: skip
    sides = (("ours", run_ours), ("ours_engine", run_engine), ("official", run_official))
    for side, run in sides:
        enc_ms, search_ms = [], []
        for _ in range(a.repeats + 1):  # the first run warms up
            ids, t_enc, t_search = run()
            enc_ms.append(t_enc)
            search_ms.append(t_search)
        enc_t, search_t = sorted(enc_ms[1:])[a.repeats // 2], sorted(search_ms[1:])[a.repeats // 2]
        result[side] = {
            "encoder_ms": round(enc_t, 1),
            "beam_search_ms": round(search_t, 1),
            "total_ms": round(enc_t + search_t, 1),
            "audio_s_per_s": round(float(result["audio_seconds"]) / ((enc_t + search_t) / 1000), 1),
            "tokens": sum(len(i) for i in ids),
        }
        result[f"{side}_ids"] = ids
    official = result.pop("official_ids")
    for side in ("ours", "ours_engine"):
        ids = result.pop(f"{side}_ids")
        same = sum(x == y for x, y in zip(ids, official, strict=True))
        result[side]["same_1best_as_official"] = f"{same}/{a.batch}"  # type: ignore[index]
        speedup = result["official"]["total_ms"] / result[side]["total_ms"]  # type: ignore[index]
        result[side]["speedup_vs_official"] = round(speedup, 2)  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
