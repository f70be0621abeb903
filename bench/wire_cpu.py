"""The server's event-loop CPU under WebSocket streams, with and without permessage-deflate.

    python bench/wire_cpu.py --model DIR --streams 300 --duration 20

For each configuration, in one run: a fresh `rtserve serve --model DIR` (plain, then with
`--ws-per-message-deflate`), bench/loadgen.py's streams against its `/v1/stream` for `--duration`
seconds (100 ms PCM16 frames in real time; the websockets client offers permessage-deflate, as
browsers do), and the CPU seconds the server used meanwhile: its main thread (the event loop:
WebSocket frames, sessions, events) and the whole process (the runtime thread's model work
too), per second of the load, from /proc (Linux). With a model that keeps up (a tiny checkpoint
on a CPU), the main thread's share is what the protocol path costs per stream. Prints a table;
`--out` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.bench.asr import free_port, wait_for_health

HERE = Path(__file__).resolve().parent
CONFIGS = {"plain": [], "deflate": ["--ws-per-message-deflate"]}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def measure(a: argparse.Namespace, flags: list[str], log: Path) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "rtserve", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--max-sessions", str(a.streams + 8), *flags]
    cmd += ["--model", str(a.model)] if a.model else []
    server = subprocess.Popen(cmd, cwd=HERE.parent, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_health(port, server, log)
        main0, all0, t0 = cpu_seconds(server.pid, server.pid), cpu_seconds(server.pid), time.time()
        load = [
            sys.executable,
            str(HERE / "loadgen.py"),
            "--url",
            f"ws://127.0.0.1:{port}/v1/stream",
        ]
        load += ["--streams", str(a.streams), "--procs", str(a.procs)]
        load += ["--duration", str(a.duration), "--drain", "10", "--json"]
        out = subprocess.run(load, capture_output=True, text=True, timeout=a.duration + 300)
        wall = time.time() - t0
        main, whole = cpu_seconds(server.pid, server.pid) - main0, cpu_seconds(server.pid) - all0
    finally:
        server.terminate()
        server.wait(timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{out.stderr[-2000:]}")
    lg = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "flags": flags,
        "wall_s": round(wall, 2),
        "main_thread_cpu_s": round(main, 2),
        "process_cpu_s": round(whole, 2),
        "main_thread_cpu_per_wall_s": round(main / wall, 3),
        "p50_ms": lg["p50_ms"],
        "p95_ms": lg["p95_ms"],
        "errors": lg["errors"],
        "partials": lg["partials"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a checkpoint folder (default: the embedded model)")
    p.add_argument("--streams", type=int, default=300)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--out", type=Path, help="write the JSON here too")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtserve-wire-cpu-") as tmp:
        results = {n: measure(a, f, Path(tmp) / f"{n}.log") for n, f in CONFIGS.items()}
    plain, deflate = results["plain"], results["deflate"]
    ratio = deflate["main_thread_cpu_s"] / max(plain["main_thread_cpu_s"], 1e-9)
    doc = {"streams": a.streams, "duration_s": a.duration, "configs": results}
    doc["deflate_over_plain_main_thread_cpu"] = round(ratio, 2)
    print(
        f"{'config':>8} {'main thread cpu s':>18} {'process cpu s':>14} {'p50 ms':>8} {'p95 ms':>8}"
    )
    for name, r in results.items():
        row = (r["main_thread_cpu_s"], r["process_cpu_s"], r["p50_ms"], r["p95_ms"])
        print(f"{name:>8} {row[0]:>18.2f} {row[1]:>14.2f} {row[2]:>8.0f} {row[3]:>8.0f}")
    print(f"deflate / plain, the event loop's CPU: {ratio:.2f}x")
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
