"""The example clients in examples/ against a real server: they run and print captions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.server import make_server, running
from tests.test_realtime import silence, speech
from tests.tone_asr import ToneAsr

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def served():
    with running(make_server([ToneAsr()])) as url:
        yield url


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("examples") / "talk.wav"
    sf.write(
        path,
        np.concatenate([silence(400), speech(), silence(1200), speech("weather"), silence(400)]),
        16000,
    )
    return path


def run(script: str, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--fast"],
        capture_output=True,
        timeout=60,
        cwd=EXAMPLES,
    )  # fmt: skip  (bytes: text mode would turn the clients' carriage returns into newlines)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def finished_lines(out: str) -> list[str]:
    """What a terminal shows at the end: each line's text after its last carriage return."""
    shown = [line.split("\r\x1b[K")[-1] for line in out.split("\n")]
    return [line for line in shown if line.strip()]


def test_stream_file(served, talk):
    lines = finished_lines(run("stream_file.py", str(talk), "--url", f"ws://{served}"))
    assert len(lines) >= 2 and all("|" not in line for line in lines)


def test_openai_sdk_captions(served, talk):
    out = run("openai_sdk_captions.py", str(talk), "--base-url", f"http://{served}/v1")
    assert len([line for line in out.splitlines() if line.strip()]) >= 2


def test_stream_client(served, talk):
    lines = [
        line
        for line in finished_lines(run("stream_client.py", str(talk), "--url", f"ws://{served}"))
        if line.startswith("[")
    ]
    assert len(lines) >= 2 and all("] " in line for line in lines)
