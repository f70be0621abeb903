"""The profiling scripts under bench/ that run in the project's own environment: each starts and
prints its usage (the imports between them and of the engine still hold)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPTS = [
    "profile_asr.py", "profile_decode.py", "profile_host.py", "profile_streams_host.py",
    "profile_train.py", "tune_gemv.py", "wire_cpu.py",
]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_starts(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_wire_cpu_measures_both_configurations(tmp_path):
    from tests.tiny_models import build_qwen3_asr

    model = build_qwen3_asr(tmp_path / "asr", seed=0)
    out = tmp_path / "wire.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wire_cpu.py"), "--model", str(model),
         "--streams", "4", "--duration", "3", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    for name in ("plain", "deflate"):
        r = doc["configs"][name]
        assert r["process_cpu_s"] > 0 and 0 <= r["main_thread_cpu_s"] <= r["process_cpu_s"]
        assert r["partials"] > 0 and r["errors"] == 0
    assert doc["configs"]["deflate"]["flags"] == ["--ws-per-message-deflate"]


def test_streams_host_profile_reports_each_cost():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_streams_host.py"), "--streams", "8"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["streams"] == 8
    assert all(row[k] > 0 for k in ("feed_us", "audio_command_us", "has_work_us"))
