"""The plugin's wiring into SGLang: entry point, backend registration, and the hooks of SGLang
internals in _compat.py, which must fail here (not silently in a server) when SGLang changes."""

from __future__ import annotations

from importlib import metadata
from types import SimpleNamespace

import pytest

from tq_core.errors import TQConfigError
from tq_sglang import _compat, settings


@pytest.fixture(scope="module")
def plugins_loaded():
    """SGLang's own plugin loading, as every engine process runs it."""
    from sglang.srt.plugins import load_plugins

    load_plugins()


def test_entry_point_is_in_sglangs_plugin_group():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="sglang.srt.plugins")}
    assert names.get("tq") == "tq_sglang:register"


def test_every_hooked_sglang_function_exists_with_the_parameters_used():
    _compat.check_hook_targets()  # raises with the target's name when SGLang moved it


def test_a_moved_or_changed_target_is_an_error(monkeypatch):
    monkeypatch.setattr(_compat, "HOOK_TARGETS", {"sglang.srt.utils.common.no_such_fn": ()})
    with pytest.raises(TQConfigError, match="no_such_fn"):
        _compat.check_hook_targets()
    monkeypatch.setattr(
        _compat, "HOOK_TARGETS", {_compat.SUPPORT_TRITON: ("backend", "renamed_argument")}
    )
    with pytest.raises(TQConfigError, match="renamed_argument"):
        _compat.check_hook_targets()


def test_backend_and_hooks_are_installed_by_load_plugins(plugins_loaded):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
    from sglang.srt.utils import common

    assert settings.BACKEND_NAME in ATTENTION_BACKEND_CHOICES
    assert ATTENTION_BACKENDS[settings.BACKEND_NAME] is _compat.create_backend
    for target in (_compat.resolve_args_target(),
                   _compat.POOL_BUILDER, _compat.MHA_POOL_BUILDER, _compat.CELL_SIZE,
                   _compat.SUPPORT_TRITON, _compat.ALLOC_EXTEND, _compat.ALLOC_DECODE,
                   _compat.LAST_LOC):  # fmt: skip
        assert target in HookRegistry._patched, f"{target} was not hooked"
    # On CPU, tq joins SGLang's list of backends that run its bookkeeping without Triton;
    # other backends answer as before.
    assert common.support_triton("tq") is False
    assert common.support_triton("triton") is True
    assert common.support_triton("torch_native") is False


def server_args(**overrides):
    fields = dict(
        attention_backend="tq", prefill_attention_backend=None, decode_attention_backend=None,
        kv_cache_dtype="auto", speculative_algorithm=None, enable_hierarchical_cache=False,
        disaggregation_mode="null", enable_dp_attention=False, device="cuda",
        disable_cuda_graph=True,
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **overrides})


def test_settings_refuse_what_tq_cannot_serve_with_one_line():
    settings.check_server_args(server_args())
    with pytest.raises(TQConfigError, match="leave --kv-cache-dtype at auto"):
        settings.check_server_args(server_args(kv_cache_dtype="fp8_e4m3"))
    with pytest.raises(TQConfigError, match="speculative decoding"):
        settings.check_server_args(server_args(speculative_algorithm="EAGLE"))
    with pytest.raises(TQConfigError, match="launch SGLang with --disable-cuda-graph"):
        settings.check_server_args(server_args(disable_cuda_graph=False))
    settings.check_server_args(server_args(disable_cuda_graph=False, device="cpu"))
    with pytest.raises(TQConfigError, match="use --attention-backend tq for both"):
        settings.tq_requested(server_args(decode_attention_backend="triton"))
    assert not settings.tq_requested(server_args(attention_backend="torch_native"))
