#!/usr/bin/env bash
# Run HERE (not on the GPU box): downloads into .whl/ (git-ignored) the cp312 wheels that the H200 box lacks, at
# the versions requirements.lock pins for Python 3.12, so that `. benchmarks/gpu_setup.sh` makes coqui-tts and
# the voicetune CLI importable there. The box has torch, transformers, peft, accelerate, numpy, scipy, numba,
# safetensors, tensorboard, onnxruntime of its own (its image; a project's pins don't apply there).
# Usage: bash benchmarks/fetch_gpu_wheels.sh [extra-package ...]   (carry `.whl` in the device call; <= 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(coqui-tts coqui-tts-trainer coqpit-config anyascii ko-speech-tools librosa audioread soxr pooch decorator
      platformdirs num2words docopt soundfile cffi pycparser inflect jaraco-functools more-itertools typeguard
      pyloudnorm monotonic-alignment-search pysbd jiwer rapidfuzz lazy-loader "$@")
py=python3
mkdir -p .whl
for name in "${PKGS[@]}"; do
  version=$("$py" - "$name" <<'PY'
import sys
from packaging.markers import Marker
from packaging.utils import canonicalize_name
env = {"python_full_version": "3.12.3", "python_version": "3.12", "implementation_name": "cpython",
       "platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux"}
want = canonicalize_name(sys.argv[1])
for line in open("requirements.lock"):
    if line[:1] in " #-\n":
        continue
    spec, _, marker = line.rstrip(" \\\n").partition(";")
    name, _, version = spec.strip().partition("==")
    if canonicalize_name(name) == want and (not marker.strip() or Marker(marker.strip()).evaluate(env)):
        print(version)
        break
PY
)
  [ -n "$version" ] || { echo "not in the lock for Python 3.12 (skipped): $name" >&2; continue; }
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version" 2>/dev/null; then
    # sdist only (docopt): build a wheel
    python3 -m pip wheel -q --no-deps -w .whl "$name==$version"
  fi
done
du -sh .whl
