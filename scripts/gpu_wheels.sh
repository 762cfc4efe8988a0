#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.py --server needs on the lent GPU machine (docs/gpu.md): its
# image has torch 2.11, transformers 5.17, numba, httpx and the rest, but not the web stack, and
# nothing can be fetched there. Python 3.12, x86-64, about 4 MB; written to .whl/ (git-ignored).
# The versions are the ones this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 \
    python-dotenv==1.2.4 uvicorn==0.55.0 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 opentelemetry-api==1.45.3 greenlet==3.5.6
ls .whl
