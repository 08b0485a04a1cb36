"""Every hook tq-sglang puts on SGLang internals, version-guarded, in one place.

SGLang gives plugins public extension points for the attention backend (its registry and the
``--attention-backend`` choices) but none for the KV pool, so tq wraps SGLang functions with
SGLang's own ``HookRegistry`` (AROUND hooks, applied by ``load_plugins`` in every process):

0. ``ServerArgs.resolve_once`` (``__post_init__`` before 0.5.20): refuse, with one line and in
   the launching process, the settings tq cannot serve (a conflicting ``--kv-cache-dtype``,
   speculative decoding, ...) before SGLang resolves them (its own checks would otherwise fail
   first, on other grounds);
1. ``KVCacheConfigurator._build_token_to_kv_pool``: refuse, with one line, the models tq
   cannot serve (MLA, hybrid sliding-window / linear-attention pools) before any pool is built;
2. ``KVCacheConfigurator._build_mha_kv_pool``: build tq's pool class instead of
   ``MHATokenToKVPool`` (SGLang picks that class itself, with no setting to change it);
3. ``DefaultPoolConfigurator._compute_cell_size``: tq's bytes per token, so SGLang's memory
   planner provisions ~3.7x more tokens at K4V4 than at bf16;
4. ``utils.common.support_triton``: a hard-coded list of backend names ("torch_native",
   "intel_amx") that run SGLang's bookkeeping without Triton; tq on CPU must join it, or SGLang
   launches Triton kernels on CPU tensors;
5. ``PagedTokenToKVPoolAllocator.alloc_extend`` / ``alloc_decode`` and ``allocation.get_last_loc``:
   SGLang allocates pages of more than one token only through Triton kernels, so on CPU it
   serves page size 1 alone. tq on CPU runs SGLang's own PyTorch page allocation instead
   (``alloc_extend_naive``, written for NPUs) so that ``--page-size 16`` works there too: tq's
   pages of 16 tokens are the ones GPUs serve, and they pad less (SmolLM2's 3 KV heads: 216
   instead of 224 bytes per token and layer at K4V4).

Each hook changes nothing unless ``--attention-backend tq`` is set. ``HookRegistry`` logs and
skips a target that no longer exists instead of failing, so ``check_hook_targets`` resolves
them up front and tests/test_compat.py fails when an SGLang release moves one.
"""

from __future__ import annotations

import functools
import inspect
import pkgutil
from importlib import metadata

from tq_core.cli.doctor import TESTED
from tq_core.errors import TQConfigError

#: SGLang releases whose internals these hooks were written against (the CPU CI matrix, which
#: tq_core's doctor lists and a tq-core test keeps equal to noxfile.py).
TESTED_SGLANG = TESTED["tq-sglang"][1]

SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
CONFIGURATOR = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator"
POOL_BUILDER = CONFIGURATOR + "._build_token_to_kv_pool"
MHA_POOL_BUILDER = CONFIGURATOR + "._build_mha_kv_pool"
CELL_SIZE = "sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size"
SUPPORT_TRITON = "sglang.srt.utils.common.support_triton"
PAGED_ALLOCATOR = "sglang.srt.mem_cache.allocator.paged.PagedTokenToKVPoolAllocator"
ALLOC_EXTEND = PAGED_ALLOCATOR + ".alloc_extend"
ALLOC_DECODE = PAGED_ALLOCATOR + ".alloc_decode"
LAST_LOC = "sglang.srt.mem_cache.allocation.get_last_loc"
#: The parameters each hook relies on, checked against SGLang's signatures.
HOOK_TARGETS = {
    POOL_BUILDER: ("self",),
    MHA_POOL_BUILDER: ("self", "max_total_num_tokens", "mha_pool_class"),
    CELL_SIZE: ("self", "kvc", "num_layers"),
    SUPPORT_TRITON: ("backend",),
    ALLOC_EXTEND: (
        "self",
        "prefix_lens",
        "prefix_lens_cpu",
        "seq_lens",
        "seq_lens_cpu",
        "last_loc",
        "extend_num_tokens",
        "num_new_pages",
    ),
    ALLOC_DECODE: ("self", "seq_lens", "seq_lens_cpu", "last_loc"),
    LAST_LOC: ("req_to_token", "req_pool_indices_tensor", "prefix_lens_tensor"),
    # What the CPU page allocation calls (not hooked, but relied on).
    "sglang.srt.mem_cache.allocator.paged.alloc_extend_naive": (
        "prefix_lens",
        "seq_lens",
        "last_loc",
        "free_pages",
        "out_indices",
        "page_size",
        "device",
    ),
    "sglang.srt.mem_cache.allocation.get_last_loc_torch": (
        "req_to_token",
        "req_pool_indices_tensor",
        "prefix_lens_tensor",
    ),
    "sglang.srt.runtime_context.get_exec": (),
    "sglang.srt.arg_groups.overrides.attention_backends_of": ("cfg",),
}


def sglang_version() -> str:
    return metadata.version("sglang")


def check_sglang_version() -> None:
    version = sglang_version()
    if not any(version == tested or version.startswith(tested + ".") for tested in TESTED_SGLANG):
        import warnings

        warnings.warn(
            f"tq-sglang was tested with SGLang {', '.join(TESTED_SGLANG)}, found {version}: its "
            "hooks of SGLang internals may not fit (tq-sglang's _compat.py)",
            stacklevel=2,
        )


def resolve_args_target() -> str:
    """Where SGLang resolves its server arguments: ``ServerArgs.resolve_once`` since 0.5.20,
    ``ServerArgs.__post_init__`` before (0.5.17, read from its wheel)."""
    server_args = pkgutil.resolve_name(SERVER_ARGS)
    return SERVER_ARGS + (".resolve_once" if hasattr(server_args, "resolve_once") else
                          ".__post_init__")  # fmt: skip


def check_hook_targets() -> None:
    """Every hooked SGLang function exists and takes the parameters the hooks use."""
    for target, needed in {resolve_args_target(): ("self",), **HOOK_TARGETS}.items():
        try:
            function = pkgutil.resolve_name(target)
        except (ImportError, AttributeError) as error:
            raise TQConfigError(
                f"SGLang {sglang_version()} has no {target}: tq-sglang's hooks do not fit this "
                "release"
            ) from error
        params = list(inspect.signature(inspect.unwrap(function)).parameters)
        missing = [name for name in needed if name not in params]
        if missing:
            raise TQConfigError(
                f"SGLang {sglang_version()} changed {target}: it lacks {', '.join(missing)}"
            )


# -- the hooks -------------------------------------------------------------------------------
def _server_args(configurator):
    return configurator.server_args


def refuse_unsupported_settings(original, server_args, *args, **kwargs):
    from tq_sglang import settings

    if settings.tq_requested(server_args):
        settings.check_server_args(server_args)
    return original(server_args, *args, **kwargs)


def refuse_unsupported(original, configurator, *args, **kwargs):
    from tq_sglang import settings

    server_args = _server_args(configurator)
    if settings.tq_requested(server_args):
        settings.check_server_args(server_args)
        if getattr(configurator, "use_mla_backend", False):
            settings.refuse_model("its attention is MLA (latent KV), not per-head K/V")
        if getattr(configurator, "is_hybrid_swa", False):
            settings.refuse_model("it mixes sliding-window and full layers in two pools")
        if getattr(configurator, "mambaish_config", None) is not None:
            settings.refuse_model("it has linear-attention / Mamba layers")
    return original(configurator, *args, **kwargs)


def build_tq_pool(original, configurator, *args, **kwargs):
    from tq_sglang import settings
    from tq_sglang.pool import TQTokenToKVPool

    if settings.tq_requested(_server_args(configurator)):
        model_config = configurator.model_config
        kwargs["mha_pool_class"] = functools.partial(
            TQTokenToKVPool,
            tq_config=settings.config_for(model_config.head_dim),
            num_model_layers=model_config.num_hidden_layers,
            center_keys=settings.center_keys(),
        )
        kwargs.pop("quant_method", None)
    return original(configurator, *args, **kwargs)


def tq_cell_size(original, pool_configurator, kvc, num_layers, *args, **kwargs):
    from tq_sglang import settings
    from tq_sglang.pool import bytes_per_token, layer_layouts

    if not settings.tq_requested(kvc.server_args):
        return original(pool_configurator, kvc, num_layers, *args, **kwargs)
    model_config = kvc.model_config
    start = kvc.layer_info.start_layer
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    if getattr(parallel, "attn_dcp_size", 1) != 1:
        raise TQConfigError("tq-sglang does not support decode context parallelism")
    layouts = layer_layouts(
        settings.config_for(model_config.head_dim),
        # SGLang < 0.5.20 takes no DCP size here; with DCP refused the two calls agree.
        model_config.get_num_kv_heads(parallel.attn_tp_size),
        kvc.page_size, range(start, start + num_layers), model_config.num_hidden_layers,
    )  # fmt: skip
    return bytes_per_token(layouts)


def no_triton_for_tq_on_cpu(original, backend, *args, **kwargs):
    from tq_sglang import settings

    if backend == settings.BACKEND_NAME:
        import torch

        return torch.cuda.is_available()
    return original(backend, *args, **kwargs)


def _tq_on_cpu(device) -> bool:
    """True inside an engine that serves tq on CPU (read from SGLang's published settings)."""
    from sglang.srt.arg_groups.overrides import attention_backends_of
    from sglang.srt.runtime_context import get_exec

    from tq_sglang import settings

    if torch_device_type(device) != "cpu":
        return False
    return settings.BACKEND_NAME in attention_backends_of(get_exec().kernel)


def torch_device_type(device) -> str:
    import torch

    return torch.device(device).type


def cpu_alloc_extend(
    original, allocator, prefix_lens, prefix_lens_cpu, seq_lens, seq_lens_cpu, last_loc,
    extend_num_tokens, num_new_pages=None,
):  # fmt: skip
    """The Triton-free twin of SGLang's paged extend allocation, for tq on CPU."""
    if not _tq_on_cpu(allocator.device):
        return original(
            allocator, prefix_lens, prefix_lens_cpu, seq_lens, seq_lens_cpu, last_loc,
            extend_num_tokens, num_new_pages,
        )  # fmt: skip
    import torch
    from sglang.srt.mem_cache.allocator.paged import alloc_extend_naive
    from sglang.srt.utils import get_num_new_pages

    if num_new_pages is None:
        num_new_pages = get_num_new_pages(
            seq_lens=seq_lens_cpu, page_size=allocator.page_size, prefix_lens=prefix_lens_cpu
        )
    if num_new_pages > len(allocator.free_pages):
        allocator.merge_and_sort_free()
    if num_new_pages > len(allocator.free_pages):
        return None
    out = torch.empty((extend_num_tokens,), dtype=torch.int64, device=allocator.device)
    alloc_extend_naive(
        prefix_lens, seq_lens, last_loc, allocator.free_pages, out, allocator.page_size,
        allocator.device,
    )  # fmt: skip
    allocator.free_pages = allocator.free_pages[num_new_pages:]
    return out


def cpu_alloc_decode(original, allocator, seq_lens, seq_lens_cpu, last_loc):
    """The Triton-free twin of SGLang's paged decode allocation, for tq on CPU: a request
    whose new token starts a page takes the next free page, the others extend their last."""
    if not _tq_on_cpu(allocator.device):
        return original(allocator, seq_lens, seq_lens_cpu, last_loc)
    import torch
    from sglang.srt.utils import get_num_new_pages

    page_size = allocator.page_size
    num_new_pages = get_num_new_pages(seq_lens=seq_lens_cpu, page_size=page_size, decode=True)
    if num_new_pages > len(allocator.free_pages):
        allocator.merge_and_sort_free()
    if num_new_pages > len(allocator.free_pages):
        return None
    needs_page = seq_lens % page_size == 1
    if num_new_pages == 0:
        out = (last_loc + 1).to(torch.int64)
    else:
        rank = (torch.cumsum(needs_page.to(torch.int64), 0) - 1).clamp(min=0)
        new_slots = allocator.free_pages[rank].to(torch.int64) * page_size
        out = torch.where(needs_page, new_slots, (last_loc + 1).to(torch.int64))
    allocator.free_pages = allocator.free_pages[num_new_pages:]
    return out


def torch_last_loc(original, req_to_token, req_pool_indices_tensor, prefix_lens_tensor):
    if _tq_on_cpu(req_to_token.device):
        from sglang.srt.mem_cache.allocation import get_last_loc_torch

        return get_last_loc_torch(req_to_token, req_pool_indices_tensor, prefix_lens_tensor)
    return original(req_to_token, req_pool_indices_tensor, prefix_lens_tensor)


def install() -> None:
    """Register the backend and the hooks (called by the ``sglang.srt.plugins`` entry point)."""
    # server_args holds the choices in 0.5.17 and re-exports them from arg_groups since 0.5.20.
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import add_attention_backend_choices

    from tq_sglang import settings

    check_sglang_version()
    check_hook_targets()
    if settings.BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(settings.BACKEND_NAME)(create_backend)
        add_attention_backend_choices([settings.BACKEND_NAME])
    hooks = {
        resolve_args_target(): refuse_unsupported_settings,
        POOL_BUILDER: refuse_unsupported,
        MHA_POOL_BUILDER: build_tq_pool,
        CELL_SIZE: tq_cell_size,
        SUPPORT_TRITON: no_triton_for_tq_on_cpu,
        ALLOC_EXTEND: cpu_alloc_extend,
        ALLOC_DECODE: cpu_alloc_decode,
        LAST_LOC: torch_last_loc,
    }
    for target, hook in hooks.items():
        HookRegistry.register(target, hook, HookType.AROUND)


def create_backend(model_runner):
    from tq_sglang.backend import TQAttnBackend

    return TQAttnBackend(model_runner)
