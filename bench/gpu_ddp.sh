#!/usr/bin/env bash
# Multi-GPU training (issue 9): the cnn recipe on 1 and on 2 GPUs under torchrun (NCCL), with
# the same eager step (DDP does not run the CUDA-graph step), then the single-GPU graphed run
# for reference. EPOCHS (default 10) keeps it inside one device call.
#   OUT=... bash bench/gpu_ddp.sh      (carry: data)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=data/mnist
# NVLink multicast stays off (the lent machines' KINDS.md): NCCL's NVLS and symmetric memory.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
EPOCHS=${EPOCHS:-10}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; \
  python3 -c "import torch; print('torch', torch.__version__)"; date -u; } \
  2>&1 | tee "$OUT/logs/machine_ddp.txt"
for n in 1 2; do
  torchrun --nproc_per_node=$n -m training.run --model cnn --epochs "$EPOCHS" --no-cuda-graph \
    --no-progress --no-download --no-plots --out /tmp/ddp$n --run-dir /tmp/ddp${n}run 2>&1 \
    | tee "$OUT/logs/ddp_${n}gpu.log" | tail -14
done
python3 -m training.run --model cnn --epochs "$EPOCHS" --no-progress --no-download --no-plots \
  --out /tmp/graph1 --run-dir /tmp/graph1run 2>&1 | tee "$OUT/logs/graph_1gpu.log" | tail -14
