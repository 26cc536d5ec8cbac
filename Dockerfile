# syntax=docker/dockerfile:1
#
# MNIST digit recognition: the FastAPI service (default) and the trainer, in one CUDA-capable
# image.   docker build -t mnist-serve .    docs/deployment.md has the rest.
#
# Base image: python:3.11-slim plus PyTorch's CUDA wheels from PyPI, not pytorch/pytorch.
#  - The Linux x86_64 torch wheel on PyPI carries its own CUDA runtime, cuBLAS, cuDNN and NCCL
#    (the nvidia-* / cuda-toolkit wheels), so no CUDA base image is needed: the GPU driver comes
#    from the host through the NVIDIA Container Toolkit at `docker run --gpus` time.
#  - Every Python package, torch and the CUDA libraries included, is pinned with its SHA-256 in
#    deploy/requirements.txt (generated from pyproject.toml, the same versions the tests run
#    on), where pytorch/pytorch would bring its own conda Python and package set beside ours.
#    After a dependency change in pyproject.toml, regenerate it (the command is in its header):
#      uv pip compile pyproject.toml --python-version 3.11 \
#          --python-platform x86_64-manylinux_2_28 --generate-hashes -o deploy/requirements.txt
#  - The project targets Python 3.11, which the slim image gives exactly.
# torch 2.14.1 from PyPI is built for CUDA 13.0: the host needs NVIDIA driver >= 580.
# The same image runs on machines without a GPU (MNIST_DEVICE=auto falls back to the CPU).
#
# For byte-for-byte reproducible builds pin the base by digest as well, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the locked wheels, installed into a virtual environment ----------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
# Only the lock file: this layer (several GB of torch + CUDA) is rebuilt only when it changes.
COPY deploy/requirements.txt /tmp/requirements.txt
# --require-hashes: every wheel must match the SHA-256 recorded in the lock.
# Then, in the same layer, what the image can never use at run time (6.45 GB -> see
# deploy/IMAGE_CHECK.md; each item measured in the built image):
#  - triton (0.9 GB): torch.compile's code generator. It and torch.compile's CPU backend need a
#    C compiler, which this image has not, so `train --compile` could not run here anyway.
#  - static libraries (*.a, 0.18 GB) and C/C++ headers (include/, 0.09 GB): only for compiling
#    against torch, CUDA or numpy.
#  - the packages' own test suites (tests/, 0.1 GB: scipy, numpy, networkx, sympy ...).
#  - CUDA libraries that neither torch nor any other library here links or loads (checked
#    with readelf and the torch libraries' strings): cuSOLVER's multi-GPU libcusolverMg (0.1 GB),
#    the second ("alt") build of NVRTC (0.11 GB), NVSHMEM's device bitcode (for Triton
#    kernels) and torch's bundled protoc (the protobuf compiler).
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes triton \
 && site=/opt/venv/lib/python3.11/site-packages \
 && find "$site" -name '*.a' -delete \
 && find "$site" -depth -type d \( -name include -o -name tests \) -exec rm -rf {} + \
 && rm -f "$site"/nvidia/cu13/lib/libcusolverMg.so.* "$site"/nvidia/cu13/lib/libnvrtc*.alt.so* \
        "$site"/nvidia/nvshmem/lib/libnvshmem_device.bc "$site"/torch/bin/protoc*

# ---- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mnist-serve" \
      org.opencontainers.image.description="MNIST digit recognition: FastAPI service and PyTorch trainer" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged user; the uid is what host folders written by `train` must allow.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" app \
 && useradd --system --uid "${APP_UID}" --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app

# The virtual environment from the builder: no pip cache, no build leftovers.
COPY --from=builder /opt/venv /opt/venv

# Code runs from /app (not site-packages) so that the repository layout holds in the image:
# /app/weights is the service's default weights folder and the trainer's default --out.
# MNIST_HOST=0.0.0.0: the service binds to loopback by default, useless inside a container.
# MPLCONFIGDIR / XDG_CACHE_HOME: writable for any uid (compose runs `train` as the host user).
# NVIDIA_DRIVER_CAPABILITIES: the driver parts the NVIDIA Container Toolkit mounts (compute for
# CUDA, utility for nvidia-smi). NVIDIA_VISIBLE_DEVICES is deliberately not set: which GPUs a
# container sees is decided by `--gpus` / compose's device reservation, not by the image.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MNIST_HOST=0.0.0.0 \
    MNIST_PORT=8000 \
    MNIST_WORKERS=1 \
    MNIST_DEVICE=auto \
    MNIST_MODEL=cnn \
    MNIST_WEIGHTS_DIR=/app/weights \
    MNIST_DATA_DIR=/data/mnist \
    MNIST_LOG_LEVEL=info

WORKDIR /app
# Least-changing first: scripts, then the shipped weights, then the source.
# chmod by RUN, not `COPY --chmod`: the classic builder (Docker < 23 without BuildKit, and
# builders that follow it) refuses that flag. The mode must not depend on the checkout either.
COPY deploy/entrypoint.sh deploy/healthcheck.py /app/deploy/
# The code stays root-owned (read-only to the service). runs/ is where the trainer writes plots
# and resume checkpoints; compose mounts a host folder over it.
RUN chmod 0755 /app/deploy/entrypoint.sh /app/deploy/healthcheck.py \
 && mkdir -p /app/runs && chown app:app /app/runs
COPY weights/ /app/weights/
COPY training/ /app/training/
COPY service/ /app/service/

USER ${APP_UID}:${APP_UID}

EXPOSE 8000

# Ready = every model loaded and warmed up (GET /health/ready answers 200, else 503).
# The start period covers loading the models and the CUDA context; failures in it do not count.
# No --start-interval: Docker Engine < 25 and buildah 1.28 (Debian 12) refuse the whole file on
# that flag. Instead the interval is short enough that a started container is marked healthy
# within 10 s of being ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]

# `serve` (the default) runs `python -m service`; `train ARGS` runs `python -m training.run ARGS`;
# anything else runs as a command. SIGTERM lets uvicorn finish the requests in flight.
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["serve"]
