#!/usr/bin/env bash
# Second GPU session: the default CNN and the fast recipe with the CUDA-graph train step.
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_train2.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-data/mnist}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; \
  python3 -c "import torch; print('torch', torch.__version__)"; echo "commit ${COMMIT:-?}"; date -u; } \
  | tee "$OUT/logs/machine2.txt"
python3 -m training.run --model cnn --no-progress --no-download --run-dir runs/cnn \
  2>&1 | tee "$OUT/logs/train_cnn_graph.log"
python3 -m training.run --model fast --no-progress --no-download --no-plots --out "$OUT/fast" \
  --run-dir runs/fast 2>&1 | tee "$OUT/logs/train_fast.log"
python3 bench/train_speed.py --seeds 5 --json "$OUT/logs/train_speed2.json" 2>&1 \
  | tee "$OUT/logs/train_speed2.log"
rm -f runs/*/last.ckpt
tar czf "$OUT/results2.tgz" weights runs "$OUT/logs"
