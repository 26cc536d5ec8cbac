#!/usr/bin/env bash
# The service's latency tail on the lent GPU machine: client vs server vs TCP counters, in one
# device call (bench/gpu_tail.py says what it runs). Carries: data (MNIST), .whl (the service's
# wheels for the GPU image's Python, and py-spy), .debs (wrk); WHL and DEBS name other folders.
#   OUT=... bash bench/gpu_tail.sh        (PLAN=smoke DEVICE=cpu DURATION=1 for a quick check)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
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
timeout "${LIMIT:-540}" "$PY" bench/gpu_tail.py --device "${DEVICE:-cuda}" --plan "${PLAN:-full}" \
  --duration "${DURATION:-4}" --budget "${BUDGET:-420}" --out "$OUT" 2>&1 | tee "$OUT/tail.log"
