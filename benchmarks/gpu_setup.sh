# Source this on the lent GPU box (see /work/shared/GPU-NOTES.md): makes coqui-tts importable there.
#   . benchmarks/gpu_setup.sh || exit
# Installs the carried wheels (${VT_WHEELS:-.whl}/, git-ignored) into /tmp/site and adds an empty `torchcodec` package
# with a dist-info (coqui-tts imports torchcodec; transformers reads its version; 0.0.1 keeps transformers
# from choosing it as an audio backend). voicetune itself never uses torchcodec.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${VT_WHEELS:-.whl}"/*.whl \
  || return 1
mkdir -p /tmp/site/torchcodec /tmp/site/torchcodec-0.0.1.dist-info
: > /tmp/site/torchcodec/__init__.py
printf 'Metadata-Version: 2.1\nName: torchcodec\nVersion: 0.0.1\n' > /tmp/site/torchcodec-0.0.1.dist-info/METADATA
export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1
