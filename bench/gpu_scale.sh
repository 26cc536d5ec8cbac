#!/usr/bin/env bash
# Uploads/s against the number of workers on the lent GPU machine (bench/gpu_scale.py), in one
# device call. Carries: data (MNIST), .whl (the service's wheels for the GPU image's Python),
# .debs (wrk); WHL and DEBS name other folders.
#   OUT=... bash bench/gpu_scale.sh          (WORKERS=1,2 DEVICE=cpu DURATION=2 for a smoke run)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WHL=${WHL:-.whl} DEBS=${DEBS:-.debs}
if [ -d "$WHL" ] && ! "$PY" -c "import fastapi" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
if ! command -v wrk >/dev/null; then
  mkdir -p /tmp/wrkroot && for f in "$DEBS"/*.deb; do dpkg -x "$f" /tmp/wrkroot; done
  export PATH=/tmp/wrkroot/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/wrkroot/usr/lib/x86_64-linux-gnu
fi
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-data/mnist}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; date -u; } \
  >"$OUT/machine.txt" 2>&1
timeout "${LIMIT:-580}" "$PY" bench/gpu_scale.py --device "${DEVICE:-cuda}" \
  --workers "${WORKERS:-1,2,4,8,12}" --connections "${CONNECTIONS:-64,256}" \
  --duration "${DURATION:-8}" --budget "${BUDGET:-540}" --out "$OUT" 2>&1 | tee "$OUT/scale.log"
