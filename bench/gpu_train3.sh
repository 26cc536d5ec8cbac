#!/usr/bin/env bash
# Third GPU session: CNN recipe candidates (chosen on validation accuracy) and the
# training-speed table.   bash bench/gpu_train3.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs" cands
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-data/mnist}
train() {  # name, then extra flags
  local name=$1; shift
  python3 -m training.run --model cnn --name "$name" --no-progress --no-download --out cands \
    --run-dir "runs/$name" "$@" 2>&1 | tee "$OUT/logs/train_$name.log" | tail -9
}
train cnn_e50_s0 --epochs 50 --seed 0
train cnn_e50_s1 --epochs 50 --seed 1
train cnn_w48_e40_s0 --epochs 40 --width 48 --seed 0
python3 bench/train_speed.py --seeds 5 --json "$OUT/logs/train_speed2.json" 2>&1 \
  | tee "$OUT/logs/train_speed2.log"
rm -f runs/*/last.ckpt
tar czf "$OUT/results3.tgz" cands runs "$OUT/logs"
