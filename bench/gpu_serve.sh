#!/usr/bin/env bash
# GPU session for serving and multi-process training: torchrun with one GPU, model-only
# throughput of the shipped weights, and the API end to end under wrk (batching off and on).
# Carries: data (MNIST), .whl (service wheels for the GPU image's Python), .debs (wrk).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MNIST_DATA_DIR=data/mnist
mkdir -p /tmp/wrkroot && for f in .debs/*.deb; do dpkg -x "$f" /tmp/wrkroot; done
export PATH=/tmp/wrkroot/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/wrkroot/usr/lib/x86_64-linux-gnu
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; wrk -v | head -1; \
  python3 -c "import torch, fastapi; print('torch', torch.__version__, 'fastapi', fastapi.__version__)"; \
  date -u; } 2>&1 | tee "$OUT/logs/machine_serve.txt"

[ "${SERVE_ONLY:-0}" = 1 ] || {
# Issue 9 on what is lent: the default recipe under torchrun with one GPU (NCCL).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
torchrun --nproc_per_node=1 -m training.run --model cnn --no-progress --no-download --no-plots \
  --out /tmp/ddp1 --run-dir /tmp/ddp1run 2>&1 | tee "$OUT/logs/torchrun_1gpu.log" | tail -9
python3 -c "from training.checkpoint import load_weights; m, meta = load_weights('/tmp/ddp1/cnn.pt', 'cuda'); print('service loader: ok', meta['test']['accuracy'], meta['world_size'])" \
  2>&1 | tee -a "$OUT/logs/torchrun_1gpu.log"

python3 bench/infer_gpu.py --data-dir data/mnist --models cnn mlp \
  --json "$OUT/logs/infer_gpu2.json" 2>&1 | tee "$OUT/logs/infer_gpu2.log" | tail -8
}
python3 bench/serve_bench.py --device cuda --workers 4 --wrk-threads 4 --duration 4 \
  --models cnn,mlp --data-dir data/mnist --out "$OUT/logs/serve-gpu.md" 2>&1 \
  | tee "$OUT/logs/serve_gpu.log" | tail -45
