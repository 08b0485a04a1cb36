"""tq-vllm: TurboQuant-compressed KV cache for vLLM, as a plugin (no fork, no edited vLLM file).

vLLM loads ``register`` through the ``vllm.general_plugins`` entry point in every process. It
registers tq as the CUSTOM attention backend; ``--attention-backend CUSTOM`` selects it and
``--additional-config '{"tq": {"k_bits": 4, "v_bits": 4}}'`` chooses the bits (settings.py).
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """The ``vllm.general_plugins`` entry point."""
    from tq_vllm import _compat

    _compat.check_vllm_version()
    _compat.register_backend()
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        _compat.honour_custom_backend_on_cpu()
    if _compat.needs_page_spec_patch():
        _compat.size_pages_without_customize_spec()


__all__ = ["register"]
