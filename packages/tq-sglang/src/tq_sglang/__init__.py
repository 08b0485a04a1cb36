"""tq-sglang: TurboQuant-compressed KV cache for SGLang, as a plugin (no fork, no edited file).

SGLang runs ``register`` through its ``sglang.srt.plugins`` entry point in every process. It
adds the ``tq`` attention backend and the hooks that give it a compressed KV pool
(``_compat.py``); ``--attention-backend tq`` selects it and ``TQ_K_BITS`` / ``TQ_V_BITS``
choose the bits (settings.py).
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """The ``sglang.srt.plugins`` entry point."""
    from tq_sglang import _compat

    _compat.install()


__all__ = ["register"]
