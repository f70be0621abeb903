"""FireRedASR2-AED streams per GPU under the VAD segment policy: the served worker
(engine/fireredasr2_asr.py's FireRedWorker: a partial every 2 s of new audio by decoding the open
segment again, the final at each commit; due segments batched) at the released shape with random
weights, in process; its beam search on the paged engine.

For each N of `--streams`: N streams, each fed 100 ms of noise every 100 ms of wall time for
`--duration` seconds and committing a segment every `--segment-seconds` (as VAD would; the first
segment of each stream has a random length, so commits do not all fall on one instant). Random
weights never say <eos>, so every decode runs `--max-len` beam steps (a transcript's length:
about 3 tokens a second of a 10-20 s segment). Reported per N: final latency (commit to Final)
p50/p95/p99, the largest lag (audio fed but not yet heard by the model, seconds) and the lag at
the end of feeding, partials and finals received; then the largest N whose final p95 stays under
`--target-ms`. The lag has a floor of 2 s: a partial decodes every 2 s of new audio.

    python3 bench/fireredasr2_streams.py --streams 8,16,32,64 --duration 60

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio.kaldi_cmvn import FireRedFrontend  # noqa: E402
from engine.aed_beam_search import BeamSettings  # noqa: E402
from engine.aed_engine_search import aed_engine  # noqa: E402
from engine.chunked import FunasrHandle  # noqa: E402
from engine.fireredasr2_asr import FireRedWorker  # noqa: E402
from engine.fireredasr2_tokens import FireRedTokens  # noqa: E402
from engine.models.fireredasr2 import FireRedAed, FireRedConfig  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.streaming import Final, Partial  # noqa: E402

CHUNK = 1600  # 100 ms at 16 kHz


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


async def run_streams(worker: FireRedWorker, n: int, duration: float, segment_s: float) -> dict:
    rng = random.Random(n)
    fed = [0] * n
    heard = [0] * n
    commits: dict[tuple[int, int], float] = {}
    finals: list[float] = []
    partials = [0]
    max_lag = [0.0]

    async def read(i: int, handle: FunasrHandle) -> None:
        async for event in handle:
            if isinstance(event, Partial):
                partials[0] += 1
            elif isinstance(event, Final):
                finals.append((time.perf_counter() - commits.pop((i, event.segment))) * 1000)
            heard[i] = handle.consumed_samples
            max_lag[0] = max(max_lag[0], (fed[i] - heard[i]) / 16000)

    async def feed(i: int, handle: FunasrHandle) -> None:
        noise = np.random.default_rng(i)
        segment, until = 0, rng.uniform(0.3, 1.0) * segment_s
        start = time.perf_counter()
        for k in range(int(duration * 10)):
            handle.feed((0.05 * noise.standard_normal(CHUNK)).astype(np.float32))
            fed[i] += CHUNK
            if (k + 1) / 10 >= until:
                commits[(i, segment)] = time.perf_counter()
                handle.commit()
                segment, until = segment + 1, until + segment_s
            await asyncio.sleep(max(0.0, start + (k + 1) / 10 - time.perf_counter()))
        commits[(i, segment)] = time.perf_counter()  # finish() commits the open segment, if any
        handle.finish()

    handles = [FunasrHandle(worker) for _ in range(n)]
    readers = [asyncio.create_task(read(i, h)) for i, h in enumerate(handles)]
    await asyncio.gather(*(feed(i, h) for i, h in enumerate(handles)))
    end_lag = max((f - h) / 16000 for f, h in zip(fed, heard, strict=True))
    await asyncio.wait_for(asyncio.gather(*readers), timeout=600)
    return {
        "streams": n,
        "final_p50_ms": percentile(finals, 50),
        "final_p95_ms": percentile(finals, 95),
        "final_p99_ms": percentile(finals, 99),
        "max_lag_s": round(max_lag[0], 2),
        "end_lag_s": round(end_lag, 2),
        "partials": partials[0],
        "finals": len(finals),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", default="8,16,32")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--segment-seconds", type=float, default=15.0)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--target-ms", type=float, default=1000.0)
    p.add_argument("--small", action="store_true", help="a 4-layer d=256 model (smoke test)")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = FireRedConfig()
    if a.small:
        cfg = FireRedConfig(d_model=256, n_head=4, n_layers_enc=4, n_layers_dec=4, odim=1000)
    with torch.device(a.device):
        model = FireRedAed(cfg)  # torch's default initialisation: random weights
    model.to(getattr(torch, a.dtype)).eval()
    tokens = FireRedTokens([f"t{i}" for i in range(cfg.odim)])
    frontend = FireRedFrontend(np.zeros(cfg.idim), np.ones(cfg.idim))
    settings = BeamSettings(beam_size=a.beam, max_len=a.max_len)
    engine = aed_engine(model)  # one KV cache for all runs
    rows = []
    for n in [int(x) for x in a.streams.split(",")]:
        worker = FireRedWorker(model, tokens, frontend, 2.0, settings, engine)
        runtime = Runtime(name="bench-fireredasr2")
        worker.runtime = runtime
        runtime.add(worker)
        try:
            rows.append(asyncio.run(run_streams(worker, n, a.duration, a.segment_seconds)))
        finally:
            runtime.shutdown()
    under = [r["streams"] for r in rows if (r["final_p95_ms"] or 0) <= a.target_ms]
    result = {
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "dtype": a.dtype,
        "parameters_m": round(sum(t.numel() for t in model.parameters()) / 1e6, 1),
        "settings": {k: v for k, v in vars(a).items() if k != "streams"},
        "capacity": rows,
        "max_streams_final_p95_under_target": max(under, default=0),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
