#!/usr/bin/env bash
# Fashion-MNIST on one GPU: cnn recipe candidates (the shipped one is chosen on validation
# accuracy), then the mlp, rnn and fast recipes.  Run from a folder holding training/ and the
# four Fashion-MNIST .gz files in fashion-mnist/:
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_fashion.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs" cands
export PYTHONUNBUFFERED=1 FASHION_MNIST_DATA_DIR=${FASHION_MNIST_DATA_DIR:-fashion-mnist}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; \
  python3 -c "import torch; print('torch', torch.__version__)"; echo "commit ${COMMIT:-?}"; date -u; } \
  | tee "$OUT/logs/machine.txt"
train() {  # name, model, then extra flags
  local name=$1 model=$2; shift 2
  python3 -m training.run --dataset fashion-mnist --model "$model" --name "$name" --no-progress \
    --no-download --out cands --run-dir "runs/$name" "$@" 2>&1 \
    | tee "$OUT/logs/train_$name.log" | tail -8
}
train cnn_flip_shift_erase cnn                     # the recipe as written
train cnn_flip_shift cnn --set erase=0
train cnn_flip_affine_erase cnn --set 'affine={}'  # the digit affine (rotate, scale, shear)
train cnn_flip_shift_erase_ls cnn --set label_smoothing=0.1
train cnn_w48_flip_shift_erase cnn --width 48
train mlp mlp --no-plots
train rnn rnn --no-plots
train fast fast --no-plots
rm -f runs/*/last.ckpt
grep -H -E "val accuracy|test accuracy|training loop" "$OUT"/logs/train_*.log
tar czf "$OUT/fashion.tgz" cands runs "$OUT/logs"
