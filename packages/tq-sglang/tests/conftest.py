"""tq-sglang's tests run inside SGLang's CPU build (nox -s sglang): the fast tests drive SGLang's
real pool, attention backend and batch classes on CPU tensors; the engine tests start real
SGLang engines on SmolLM2 in subprocesses (engine_job.py)."""

from __future__ import annotations

import os

# SGLang's CPU engine path (no vLLM import, no CUDA kernels); set before SGLang is imported.
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
