#!/bin/bash
# Wheels (CPython 3.12, manylinux x86_64) of funasr 1.4.16 and of exactly the packages its
# inference on Paraformer, Paraformer-streaming, SenseVoiceSmall and FunASRNano imports, into the
# git-ignored folder .whl-funasr/ at the project root, for the offline GPU host (uploads of at
# most ~60 MiB). The funasr baselines of `rtserve bench asr` (bench/funasr_baseline.py,
# bench/fun_asr_nano_baseline.py) run on them.
#
# The list was found by installing funasr with --no-deps on an interpreter holding only what the
# GPU image has (torch, torchaudio, numpy, transformers 5.17 and its dependencies, tokenizers,
# safetensors, sentencepiece, PIL, numba, msgpack), running the four models through AutoModel
# and the baseline scripts, and adding what each ModuleNotFoundError named until they ran.
# funasr imports every submodule at `import funasr` but swallows their ImportErrors, so most of
# its declared requirements (modelscope, oss2, jieba, jamo, hydra-core, scipy, scikit-learn,
# umap-learn, tensorboardX, tiktoken, torch_complex, websockets...) are never needed here.
# Versions are those of the reference environment (.venv-ref, tests/fixtures/make_ref_env.sh).
# antlr4-python3-runtime 4.9.3 (omegaconf 2.3's grammar runtime, pinned by it) is published only
# as an sdist: it is pure Python, so it is built into a wheel here.
#
# Usage (from the project root): bash bench/funasr_wheels.sh
# On the GPU host:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/fx .whl-funasr/*.whl
#   export PYTHONPATH=/tmp/fx   (or pass --baseline-python to a wrapper that sets it)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
out=.whl-funasr
grep -qx "/$out/" .git/info/exclude || echo "/$out/" >> .git/info/exclude
rm -rf "$out"
mkdir -p "$out"
pkgs=(
  funasr==1.4.16
  omegaconf==2.3.1    # funasr.auto.auto_model, the registry's configs
  kaldiio==2.18.1     # funasr.utils.load_utils
  librosa==0.11.0     # funasr.utils.load_utils (lazy: its submodules load only when used)
  lazy_loader==0.6    # librosa's lazy imports
  soundfile==0.14.0   # funasr.utils.load_utils
  cffi==2.1.1         # soundfile's binding
  soxr==1.1.0         # librosa, at import
  rapidfuzz==3.14.6   # funasr.utils.postprocess_hotwords (auto_model)
  requests==2.34.2    # funasr.download
  urllib3==2.8.0      # requests
  six==1.17.0         # kaldiio
)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$out" "${pkgs[@]}"
python3 -m pip wheel -q --no-deps -w "$out" antlr4-python3-runtime==4.9.3
ls -la "$out"
size=$(du -sk "$out" | cut -f1)
echo "$out: $((size / 1024)) MiB ($size KiB)"
if [ "$size" -ge $((45 * 1024)) ]; then
  echo "too large for one upload (limit 45 MiB)" >&2
  exit 1
fi
