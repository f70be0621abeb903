#!/bin/bash
# The FunASR families' benches, each against funasr 1.4.16 in the same run, on random weights in
# the released shapes: Paraformer-streaming capacity (and funasr's streaming `generate`),
# two-pass capacity (Paraformer-streaming partials, SenseVoiceSmall finals), and Fun-ASR-Nano
# (capacity, offline, and funasr's FunASRNano). The benches' JSON and plots go to OUT; a bench
# that fails is reported and the others still run.
#
# Usage (from the project root): bash bench/funasr_family.sh OUT [BASELINE_PYTHON]
#   BASELINE_PYTHON: an interpreter that imports funasr (default: the reference environment).
#   Environment: STREAMS (default 64,256), DURATION (seconds, 15), CONCURRENCY (offline clips at
#   once, 128), DEVICE (cuda), BASELINE_TIMEOUT (seconds per baseline, 150), MODELS (folder for
#   the checkpoints, a temp dir), PYTHON (python3).
# On a GPU host without funasr, install the wheels of bench/funasr_wheels.sh first:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/fx .whl-funasr/*.whl
#   PYTHONPATH=/tmp/fx bash bench/funasr_family.sh OUT python3
set -uo pipefail
out=${1:?usage: bash bench/funasr_family.sh OUT [BASELINE_PYTHON]}
baseline=${2:-.venv-ref/bin/python}
streams=${STREAMS:-64,256}
duration=${DURATION:-15}
device=${DEVICE:-cuda}
timeout=${BASELINE_TIMEOUT:-150}
models=${MODELS:-$(mktemp -d)}
py=${PYTHON:-python3}
mkdir -p "$out" "$models"
failed=0

run() {  # name, command...: logs to OUT/NAME.log, goes on after a failure
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then
    echo "   done in $((SECONDS - t0)) s"
  else
    echo "   FAILED after $((SECONDS - t0)) s; the end of $out/$name.log:"
    tail -5 "$out/$name.log"
    failed=$((failed + 1))
  fi
}

bench=("$py" -m rtserve bench asr --device "$device" --streams "$streams" --duration "$duration"
  --concurrency "${CONCURRENCY:-128}")
with_baseline=(--baseline-python "$baseline" --baseline-timeout "$timeout")

run shapes-paraformer-streaming "$py" -m engine.bench.funasr_shapes paraformer-large-streaming \
  "$models/paraformer-large-streaming"
run shapes-sensevoice "$py" -m engine.bench.funasr_shapes sensevoice-small "$models/sensevoice-small"
run shapes-fun-asr-nano "$py" -m engine.bench.fun_asr_nano "$models/fun-asr-nano-2512"

run paraformer-streaming "${bench[@]}" --model "$models/paraformer-large-streaming" \
  --workloads capacity,baseline "${with_baseline[@]}" --out "$out"
run 2pass "${bench[@]}" --model "$models/paraformer-large-streaming" \
  --second-pass "$models/sensevoice-small" --segment-seconds-live 5 --workloads capacity \
  --out "$out"  # a commit every 5 s: the second pass's finals fall inside the run
run fun-asr-nano "${bench[@]}" --model "$models/fun-asr-nano-2512" --header-tokens 0 \
  --workloads capacity,offline,baseline "${with_baseline[@]}" --out "$out"

echo "$failed failed"
exit $((failed > 0))
