#!/usr/bin/env bash
# Everything that needs the GPU, in one go: train the three shipped models, then the
# training-speed and model-only inference benchmarks. Results land in $OUT (or ./gpu-out).
#   MNIST_DATA_DIR=data/mnist bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-data/mnist}
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; \
  $PY -c "import torch; print('torch', torch.__version__)"; git rev-parse --short HEAD; date -u; } \
  | tee "$OUT/logs/machine.txt"
for model in ${MODELS:-cnn mlp rnn}; do
  $PY -m training.run --model "$model" --no-progress --no-download \
      --run-dir "runs/$model" 2>&1 | tee "$OUT/logs/train_$model.log"
done
$PY bench/train_speed.py --seeds 5 --json "$OUT/logs/train_speed.json" 2>&1 \
  | tee "$OUT/logs/train_speed.log"
$PY bench/infer_gpu.py --data-dir "$MNIST_DATA_DIR" --models cnn mlp rnn \
    --json "$OUT/logs/infer_gpu.json" 2>&1 | tee "$OUT/logs/infer_gpu.log"
rm -f runs/*/last.ckpt
tar czf "$OUT/results.tgz" weights runs "$OUT/logs"
