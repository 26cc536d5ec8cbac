#!/usr/bin/env bash
# Everything that must run on the GPU machine, as named steps, in one device call:
#   OUT=... bash bench/gpu.sh STEP...        (from the repository root or anywhere)
# Steps (each writes to $OUT/STEP/, with machine.txt: GPU, cores, torch, commit, date):
#   infer        model-only images/s at batch 1-8192, precision variants (bench/infer_gpu.py)
#   train-speed  the fast recipe against plainer variants, 5 seeds (bench/train_speed.py)
#   train-fast   the variants the fast recipe was chosen from (5 seeds each; the choice: best
#                validation mean with a loop <= 0.145 s), then `training.run --model fast`
#                end to end twice, and once with the cuDNN autotuner flipped
#   train-cnn    `training.run --model cnn` for seeds 0 1 2, one at a time (CNN_SET: extra
#                flags, e.g. "--set stroke=0.5"); weights, plots and logs in cnn.tgz
#   train-cands  cnn candidates on validation, seed 0: moving average, stroke width, elastic,
#                label smoothing, width 48, 80 epochs, scale, combinations; weights in cands.tgz
#   train-setup  where start-up goes, finely (bench/train_setup.py: fast, cnn and m5, cuDNN
#                autotuner on and off) and the import tree (python -X importtime)
#   train-e2e    `python -m training.run --model fast` start to exit, as a user types it, twice
#                (BASE: another checkout's root, run alternately as the baseline), then the cnn
#                once; and the import of torch._dynamo alone
#   train-cands2 cnn candidates, round 2: the M5-style model (5x5 convolutions) for seeds 0-2,
#                with stroke width, with label smoothing; five at a time, weights in cands2_*.tgz
#   train-views  the cnn (stroke 0.5) with training digits as the upload pipeline makes them
#                (--extra-train $VIEWS, default data/upload-views.npz from
#                `python -m training.upload_views`), seeds 0 1 2 at once; weights in views.tgz
#   resume       the cnn for 8 epochs straight (cuDNN autotuner on, then off), and killed
#                after epoch 4 then resumed through the CUDA-graph step; histories compared
#   ddp          the cnn recipe on 1 and 2 GPUs under torchrun, eager, then 1 GPU graphed
#                (EPOCHS, default 10; needs 2 GPUs for the second run)
#   fashion      Fashion-MNIST: the cnn recipe, its random-erasing candidate, the mlp recipe;
#                each run packed into $OUT/fashion/NAME.tgz as soon as it ends
#   serve        the API under wrk, batching off and on, cnn and mlp (bench/serve_bench.py)
#   graphs       the cnn's /predict rows with MNIST_CUDA_GRAPHS=false, then true
#   scale        uploads/s against 1-12 workers (bench/gpu_scale.py; WORKERS, CONNECTIONS,
#                DURATION, BUDGET, LIMIT, DEVICE=cpu for a smoke run)
# Carry: data (MNIST; MNIST_DATA_DIR, default data/mnist), for fashion the four Fashion-MNIST
# .gz files (FASHION_MNIST_DATA_DIR, default fashion-mnist); for serve, graphs and scale the
# service's wheels for the GPU image's Python (WHL, default .whl: the image has no fastapi) and
# wrk's .deb files (DEBS, default .debs). COMMIT names the commit where there is no .git.
# The training steps of the shipped weights are `python -m training.run` (see README).
# shellcheck disable=SC2329  # the steps are called by name, step_STEP
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-data/mnist}
# NVLink multicast stays off (the lent machines' KINDS.md): NCCL's NVLS and symmetric memory.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

machine() {  # the lines every result carries
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "cores $(nproc)"
  "$PY" -c "import torch; print('torch', torch.__version__)"
  echo "commit $COMMIT"
  date -u
}

service_deps() {  # fastapi & co. from wheels, wrk from .debs, where the image lacks them
  local whl=${WHL:-.whl} debs=${DEBS:-.debs}
  if [ -d "$whl" ] && ! "$PY" -c "import fastapi" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$whl"/*.whl || return 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  fi
  if ! command -v wrk >/dev/null; then
    mkdir -p /tmp/wrkroot && for f in "$debs"/*.deb; do dpkg -x "$f" /tmp/wrkroot; done
    export PATH=/tmp/wrkroot/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/wrkroot/usr/lib/x86_64-linux-gnu
  fi
}

step_infer() {
  "$PY" bench/infer_gpu.py --data-dir "$MNIST_DATA_DIR" --models cnn mlp rnn \
    --json "$1/infer_gpu.json" 2>&1 | tee "$1/infer_gpu.log"
}

step_train_speed() {
  "$PY" bench/train_speed.py --data-dir "$MNIST_DATA_DIR" --seeds 5 \
    --json "$1/train_speed.json" 2>&1 | tee "$1/train_speed.log"
}

TRAIN="training.run --no-progress --no-download"
TIMEFORMAT='command wall %R s'  # bash's `time`: start to exit, the interpreter's start included

step_train_fast() {
  local sets flip i
  "$PY" bench/train_speed.py --data-dir "$MNIST_DATA_DIR" --seeds 5 --only - \
    --json "$1/fast_variants.json" \
    --try "1 ep, b384, lr 2e-2, no cudnn autotune" epochs=1 batch_size=384 lr=0.02 \
    cudnn_benchmark=false \
    --try "1 ep, b384, lr 2e-2" epochs=1 batch_size=384 lr=0.02 \
    --try "1 ep, b384, lr 2.5e-2" epochs=1 batch_size=384 lr=0.025 \
    --try "1 ep, b384, lr 1.5e-2" epochs=1 batch_size=384 lr=0.015 \
    --try "1 ep, b512, lr 2e-2" epochs=1 batch_size=512 lr=0.02 \
    --try "1 ep, b512, lr 3e-2" epochs=1 batch_size=512 lr=0.03 \
    --try "1 ep, b448, lr 2.5e-2" epochs=1 batch_size=448 lr=0.025 \
    --try "1 ep, b320, lr 2e-2" epochs=1 batch_size=320 lr=0.02 \
    --try "1 ep, b256, lr 2e-2" epochs=1 batch_size=256 lr=0.02 \
    --try "2 ep, b512, lr 1e-2 (recipe before)" epochs=2 batch_size=512 lr=0.01 \
    2>&1 | tee "$1/fast_variants.log" | tail -13
  sets=$("$PY" - "$1/fast_variants.json" <<'PY'
import json, sys
every = json.load(open(sys.argv[1]))["rows"]
rows = [r for r in every if r["seconds_mean"] <= 0.145] or [min(every, key=lambda r: r["seconds_mean"])]
best = max(rows, key=lambda r: (r["val_accuracy_mean"], -r["seconds_mean"]))
keys = ("epochs", "batch_size", "lr", "cudnn_benchmark")
print(" ".join(f"--set {k}={json.dumps(best['recipe'][k])}" for k in keys))
PY
)
  echo "fast chosen: $sets" | tee "$1/fast_chosen.txt"
  for i in 1 2; do
    { time "$PY" -m $TRAIN --model fast $sets --out "/tmp/fast$i" --run-dir "runs/fast$i"; } \
      >"$1/fast_cmd$i.log" 2>&1
  done
  flip=$(echo "$sets" | sed 's/benchmark=true/X/; s/benchmark=false/benchmark=true/; s/X/benchmark=false/')
  { time "$PY" -m $TRAIN --model fast $flip --out /tmp/fast3 --run-dir runs/fast3; } \
    >"$1/fast_cmd_flip.log" 2>&1
  tail -10 "$1/fast_cmd2.log"
}

step_train_cnn() {
  local s
  for s in 0 1 2; do
    # shellcheck disable=SC2086  # CNN_SET is a list of flags
    { time "$PY" -m $TRAIN --model cnn ${CNN_SET:-} --seed "$s" --name "cnn_s$s" --out cands \
        --run-dir "runs/cnn_s$s"; } >"$1/cnn_s$s.log" 2>&1
    grep -E "^(test accuracy|val accuracy|training loop |command wall)" "$1/cnn_s$s.log"
    rm -f "runs/cnn_s$s/last.ckpt"
  done
  tar czf "$1/cnn.tgz" cands/cnn_s* runs/cnn_s*
}

step_train_views() {  # three at a time: the GPU time-slices them, so loop times are not solo
  local s views=${VIEWS:-data/upload-views.npz}
  for s in 0 1 2; do
    cand "$1" "views_s$s" --seed "$s" --set stroke=0.5 --extra-train "$views" &
  done
  wait
  tar czf "$1/views.tgz" cands/views_s*
}

step_train_cands() {  # four at a time: the GPU time-slices them, so their loop times are not solo
  local e='{"elastic_px":1.0}' combo
  combo=(--set ema=0.999 --set stroke=0.5 --set "affine=$e")
  cand "$1" ema --set ema=0.999 & cand "$1" stroke --set stroke=0.5 &
  cand "$1" elastic --set "affine=$e" & cand "$1" ls --set label_smoothing=0.1 & wait
  cand "$1" w48 --width 48 & cand "$1" e80 --epochs 80 &
  cand "$1" scale --set 'affine={"scale":[0.85,1.15]}' & cand "$1" combo "${combo[@]}" & wait
  cand "$1" combo_s1 --seed 1 "${combo[@]}" & cand "$1" base_s1 --seed 1 &
  cand "$1" combo_e80 --epochs 80 "${combo[@]}" &
  cand "$1" combo_ls --set label_smoothing=0.1 "${combo[@]}" & wait
  tar czf "$1/cands.tgz" cands
}

cand() {  # out dir, name, then extra flags
  local dir=$1 name=$2
  shift 2
  "$PY" -m $TRAIN --model cnn --no-plots --out cands --name "$name" --run-dir "runs/$name" "$@" \
    >"$dir/cnn_$name.log" 2>&1
  grep -E "^(val accuracy|test accuracy)" "$dir/cnn_$name.log" | sed "s/^/$name: /"
}

step_train_setup() {
  "$PY" -X importtime -c "import training.run" 2>"$1/importtime.txt"
  sort -t'|' -k2 -n "$1/importtime.txt" | tail -25
  "$PY" bench/train_setup.py --json "$1/train_setup.json" --runs "fast" \
    "fast --set cudnn_benchmark=true" "cnn --epochs 1" "m5 --epochs 2" 2>&1 | tee "$1/train_setup.log" | grep -A40 '^| piece'
}

step_train_e2e() {  # as typed: progress bars and plots on; weights written to /tmp
  local i base=${BASE:-}
  "$PY" -c "import time, torch; t = time.perf_counter(); import torch._dynamo
print(f'import torch._dynamo after torch: {time.perf_counter() - t:.2f} s')" | tee "$1/dynamo.txt"
  for i in 1 2; do
    if [ -n "$base" ]; then
      { time (cd "$base" && "$PY" -m training.run --model fast --out /tmp/base_fast \
          --run-dir /tmp/base_fast_run); } >"$1/base_fast_cmd$i.log" 2>&1
      grep -E "^(training loop |total|command wall)" "$1/base_fast_cmd$i.log" | sed 's/^/base: /'
    fi
    { time "$PY" -m training.run --model fast --out /tmp/e2e_fast --run-dir /tmp/e2e_fast_run; } \
      >"$1/fast_cmd$i.log" 2>&1
    grep -E "^(test accuracy|training loop |total|command wall)" "$1/fast_cmd$i.log"
    ls /tmp/e2e_fast_run >>"$1/fast_cmd$i.log"  # the plots are there at exit
  done
  { time "$PY" -m training.run --model cnn --out /tmp/e2e_cnn --run-dir /tmp/e2e_cnn_run; } \
    >"$1/cnn_cmd.log" 2>&1
  grep -E "^(test accuracy|training loop |total|command wall)" "$1/cnn_cmd.log"
}

step_train_cands2() {  # five at a time: their loop times are not solo figures
  local m5=(--model m5 --epochs 30 --set label_smoothing=0.0)  # the m5 recipe as first tried
  cand "$1" m5 "${m5[@]}" & cand "$1" m5_s1 "${m5[@]}" --seed 1 &
  cand "$1" m5_s2 "${m5[@]}" --seed 2 & cand "$1" m5_stroke "${m5[@]}" --set stroke=0.5 &
  cand "$1" m5_ls "${m5[@]}" --set label_smoothing=0.1 & wait
  tar czf "$1/cands2_a.tgz" cands/m5.* cands/m5_s1.* cands/m5_s2.*
  tar czf "$1/cands2_b.tgz" cands/m5_stroke.* cands/m5_ls.*
}

step_resume() {
  local b args=(--model cnn --epochs 8 --set stroke=0.5 --no-plots)
  for b in true false; do
    { time "$PY" -m $TRAIN "${args[@]}" --set cudnn_benchmark=$b --out "/tmp/full$b" \
        --run-dir "runs/full$b"; } >"$1/resume_full_bench$b.log" 2>&1
  done
  "$PY" -c "
import sys
from training import checkpoint, run
save = checkpoint.save_checkpoint
def save_then_die(path, **state):
    save(path, **state)
    if state['epoch'] == 4:
        sys.exit(17)
checkpoint.save_checkpoint = save_then_die
sys.exit(run.main(sys.argv[1:]))
" --no-progress --no-download "${args[@]}" --out /tmp/part --run-dir runs/part \
    >"$1/resume_killed.log" 2>&1
  echo "killed run exit: $? (17: stopped after epoch 4's checkpoint)" >>"$1/resume_killed.log"
  "$PY" -m $TRAIN "${args[@]}" --out /tmp/part --run-dir runs/part \
    --resume runs/part/last.ckpt >"$1/resume_resumed.log" 2>&1
  "$PY" - /tmp/fulltrue/cnn.json /tmp/fullfalse/cnn.json /tmp/part/cnn.json <<'PY' \
    | tee "$1/resume_compare.txt"
import json, sys
straight, other, resumed = (json.load(open(p)) for p in sys.argv[1:])
print("| epoch | train loss: straight | straight, autotuner off | resumed after 4 |")
print("|---|---|---|---|")
for a, b, c in zip(straight["history"], other["history"], resumed["history"], strict=True):
    print(f"| {a['epoch']} | {a['train_loss']:.5f} | {b['train_loss']:.5f} | {c['train_loss']:.5f} |")
print("test:", *(f"{m['test']['accuracy']:.4f}" for m in (straight, other, resumed)))
PY
  grep -E "capture failed|CUDA graph|training loop " "$1/resume_resumed.log"
}

step_ddp() {  # DDP does not run the CUDA-graph step: both sides eager, then graphed for scale
  local n epochs=${EPOCHS:-10}
  for n in 1 2; do
    torchrun --nproc_per_node="$n" -m training.run --model cnn --epochs "$epochs" \
      --no-cuda-graph --no-progress --no-download --no-plots --out "/tmp/ddp$n" \
      --run-dir "/tmp/ddp${n}run" 2>&1 | tee "$1/ddp_${n}gpu.log" | tail -14
  done
  "$PY" -m training.run --model cnn --epochs "$epochs" --no-progress --no-download --no-plots \
    --out /tmp/graph1 --run-dir /tmp/graph1run 2>&1 | tee "$1/graph_1gpu.log" | tail -14
}

step_fashion() {  # the shipped weights are the cnn run with the better validation accuracy
  export FASHION_MNIST_DATA_DIR=${FASHION_MNIST_DATA_DIR:-fashion-mnist}
  fashion_run "$1" fashion_cnn_erase cnn --set erase=0.5  # candidate: random erasing, p=0.5
  fashion_run "$1" fashion_cnn_noerase cnn                # the recipe: flips, 2 px shifts
  fashion_run "$1" fashion_mlp mlp --no-plots
}

fashion_run() {  # out dir, name, model, then extra flags
  local dir=$1 name=$2 model=$3
  shift 3
  echo "== $name: python -m training.run --dataset fashion-mnist --model $model $*"
  "$PY" -m training.run --dataset fashion-mnist --model "$model" --name "$name" --no-progress \
    --no-download --out cands --run-dir "runs/$name" "$@" 2>&1 | tee "$dir/train_$name.log" \
    | grep -E "^(training|epoch +(1|10|20|30|40|50) |model|best|val|test|training loop)"
  rm -f "runs/$name/last.ckpt"
  tar czf "$dir/$name.tgz" cands/"$name".* "runs/$name" "$dir/train_$name.log"
}

step_serve() {
  service_deps || return 1
  "$PY" bench/serve_bench.py --device cuda --workers 4 --wrk-threads 4 --duration 4 \
    --models cnn,mlp --data-dir "$MNIST_DATA_DIR" --out "$1/serve-gpu.md" 2>&1 \
    | tee "$1/serve_gpu.log" | tail -45
}

step_graphs() {
  local graphs
  service_deps || return 1
  for graphs in false true; do
    MNIST_CUDA_GRAPHS=$graphs "$PY" bench/serve_bench.py --device cuda --workers 4 \
      --wrk-threads 4 --duration 3 --models cnn --only /predict --data-dir "$MNIST_DATA_DIR" \
      --out "$1/serve-graphs-$graphs.md" 2>&1 | tee "$1/serve-graphs-$graphs.log" | tail -20
  done
}

step_scale() {
  service_deps || return 1
  timeout "${LIMIT:-580}" "$PY" bench/gpu_scale.py --device "${DEVICE:-cuda}" \
    --workers "${WORKERS:-1,2,4,8,12}" --connections "${CONNECTIONS:-64,256}" \
    --duration "${DURATION:-8}" --budget "${BUDGET:-540}" --out "$1" 2>&1 | tee "$1/scale.log"
}

if [ $# -eq 0 ]; then
  sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
for step in "$@"; do
  fn="step_${step//-/_}"
  if ! declare -F "$fn" >/dev/null; then
    echo "unknown step: $step (run bench/gpu.sh with no step for the list)" >&2
    exit 2
  fi
done
status=0
for step in "$@"; do
  dir="$OUT/$step"
  mkdir -p "$dir"
  machine >"$dir/machine.txt" 2>&1
  echo "=== $step ($(date -u +%H:%M:%S) UTC) -> $dir"
  "step_${step//-/_}" "$dir" || status=1
done
exit $status
