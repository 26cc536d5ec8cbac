#!/usr/bin/env bash
# Everything that must run on the GPU machine, as named steps, in one device call:
#   OUT=... bash bench/gpu.sh STEP...        (from the repository root or anywhere)
# Steps (each writes to $OUT/STEP/, with machine.txt: GPU, cores, torch, commit, date):
#   infer        model-only images/s at batch 1-8192, precision variants (bench/infer_gpu.py)
#   train-speed  the fast recipe against plainer variants, 5 seeds (bench/train_speed.py)
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
