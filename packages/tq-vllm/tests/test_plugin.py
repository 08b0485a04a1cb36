"""The plugin's pieces that need vLLM importable but no engine: settings and the CPU patch."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from types import SimpleNamespace

import pytest
import torch

from tq_core.errors import TQConfigError
from tq_vllm import _compat, settings


def _vllm_config(tq=None, kv_cache_dtype="auto"):
    extra = {} if tq is None else {"tq": tq}
    cache = SimpleNamespace(cache_dtype=kv_cache_dtype)
    return SimpleNamespace(additional_config=extra, cache_config=cache)


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    monkeypatch.setattr(settings, "_active", None)
    for name in ("TQ_K_BITS", "TQ_V_BITS", "TQ_SKIP_FIRST_LAYERS", "TQ_CENTER_KEYS"):
        monkeypatch.delenv(name, raising=False)


def test_additional_config_wins_over_environment(monkeypatch):
    monkeypatch.setenv("TQ_K_BITS", "8")
    monkeypatch.setenv("TQ_V_BITS", "8")
    config = settings.config_from_vllm(_vllm_config({"k_bits": 4}), head_dim=64)
    assert (config.head_dim, config.k_bits, config.v_bits) == (64, 4, 8)
    assert settings.active_config() is config


@pytest.mark.parametrize("dtype", ["fp8", "fp8_e4m3", "turboquant_4bit_nc", "turboquant_k8v4"])
def test_conflicting_kv_cache_dtype_is_refused(dtype):
    with pytest.raises(TQConfigError, match=f"kv_cache_dtype='{dtype}' conflicts with tq"):
        settings.config_from_vllm(_vllm_config({"k_bits": 4}, kv_cache_dtype=dtype), 64)


def test_unsupported_options_fail_with_one_clear_line(monkeypatch):
    with pytest.raises(TQConfigError, match="skip_first_layers"):
        settings.config_from_vllm(_vllm_config({"skip_first_layers": 1}), 64)
    monkeypatch.setenv("TQ_SKIP_FIRST_LAYERS", "2")
    with pytest.raises(TQConfigError, match="skip_first_layers"):
        settings.config_from_vllm(_vllm_config({}), 64)
    with pytest.raises(TQConfigError, match="must be an object"):
        settings.config_from_vllm(_vllm_config("k4v4"), 64)
    with pytest.raises(TQConfigError, match="k_bits=9"):
        settings.config_from_vllm(_vllm_config({"k_bits": 9}), 64)


def test_key_centering_is_an_engine_option_off_unless_asked(monkeypatch):
    assert settings.center_keys_from_vllm(_vllm_config({})) is False
    monkeypatch.setenv("TQ_CENTER_KEYS", "1")
    assert settings.center_keys_from_vllm(_vllm_config({})) is True
    # The JSON wins, and the page format (the TQConfig) does not see the option.
    assert settings.center_keys_from_vllm(_vllm_config({"center_keys": False})) is False
    monkeypatch.setenv("TQ_CENTER_KEYS", "0")
    assert settings.center_keys_from_vllm(_vllm_config({"center_keys": True})) is True
    config = settings.config_from_vllm(_vllm_config({"center_keys": True, "k_bits": 4}), 64)
    assert config.k_bits == 4
    with pytest.raises(TQConfigError, match="center_keys='maybe'"):
        settings.center_keys_from_vllm(_vllm_config({"center_keys": "maybe"}))


def test_page_size_reaches_vllm_outside_the_config_context():
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from tq_core import CacheLayout, TQCodec
    from tq_vllm.backend import TQAttentionBackend

    with pytest.raises(TQConfigError, match="before any attention layer"):
        settings.active_config()
    settings.config_from_vllm(_vllm_config({"k_bits": 4, "v_bits": 4}), head_dim=64)
    spec = FullAttentionSpec(block_size=128, num_kv_heads=3, head_size=64, dtype=torch.float32)
    tq = TQAttentionBackend.customize_spec(spec)
    layout = CacheLayout(TQCodec(64, 4, 4), num_kv_heads=3, block_size=128)
    # vLLM's page is exactly one tq page: the bytes vLLM allocates are the bytes tq addresses.
    assert tq.page_size_bytes == layout.page_bytes
    assert spec.page_size_bytes / tq.page_size_bytes == pytest.approx(512 / 72)


def _selector_config():
    from vllm.v1.attention.selector import AttentionSelectorConfig

    return AttentionSelectorConfig(64, torch.float32, "auto", 128)


def test_cpu_platform_ignores_attention_backend_without_the_patch():
    """Fails when vLLM's CPU platform starts honouring --attention-backend CUSTOM itself:
    _compat.honour_custom_backend_on_cpu is then unnecessary and should go."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    original = CpuPlatform.get_attn_backend_cls
    original = getattr(original, "__wrapped__", original)
    _compat.register_backend()
    answer = original(AttentionBackendEnum.CUSTOM, _selector_config())
    assert answer == AttentionBackendEnum.CPU_ATTN.get_path()


def test_patched_cpu_platform_honours_only_tq_custom():
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    import tq_vllm

    tq_vllm.register()
    tq_vllm.register()  # every vLLM process loads plugins; twice must be harmless
    pick = CpuPlatform.get_attn_backend_cls
    assert pick(AttentionBackendEnum.CUSTOM, _selector_config()) == _compat.BACKEND_PATH
    cpu_attn = AttentionBackendEnum.CPU_ATTN.get_path()
    assert pick(None, _selector_config()) == cpu_attn


def test_vllm_version_is_in_the_tested_range():
    assert _compat.OLDEST <= _compat.vllm_version() <= _compat.NEWEST


def test_vllm_0_26_page_spec():
    """The vLLM < 0.30 path (no customize_spec), checked where it can be: TQPageSpec's page
    (``real_page_size_bytes``, from which vLLM 0.26 sizes pages) is block_size x tq's bytes,
    and merging layers of different tq sizes is refused."""
    from tq_core.errors import TQUnsupportedModelError

    def spec(bytes_per_token):
        return _compat.TQPageSpec(
            block_size=16, num_kv_heads=8, head_size=128, dtype=torch.uint8,
            tq_bytes_per_token=bytes_per_token,
        )  # fmt: skip

    assert spec(1088).real_page_size_bytes == 16 * 1088
    assert _compat.TQPageSpec.merge([spec(1088), spec(1088)]).real_page_size_bytes == 16 * 1088
    with pytest.raises(TQUnsupportedModelError, match="differ in tq bytes"):
        _compat.TQPageSpec.merge([spec(1088), spec(1600)])
    # Fails when a tested vLLM >= 0.30 loses customize_spec (the 0.26 patch would then apply).
    assert _compat.needs_page_spec_patch() == (_compat.vllm_version() < (0, 30))


def test_flash_attention_that_prefill_borrows_is_where_compat_calls_it():
    """_compat.flash_attention_varlen calls vLLM's FlashAttention by module, function and
    keywords; this fails when vLLM moves or renames any of them. Read from the source: CPU
    builds ship the module but cannot import it, which is the other half checked here."""
    vllm_root = pathlib.Path(importlib.util.find_spec("vllm").origin).parent
    package = vllm_root.joinpath(*_compat.FLASH_ATTENTION_MODULE.split(".")[1:])
    exported = {
        alias.name
        for node in ast.parse((package / "__init__.py").read_text()).body
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("flash_attn_interface")
        for alias in node.names
    }
    assert {"flash_attn_varlen_func", "is_fa_version_supported"} <= exported
    interface = ast.parse((package / "flash_attn_interface.py").read_text())
    function = next(
        node
        for node in interface.body
        if isinstance(node, ast.FunctionDef) and node.name == "flash_attn_varlen_func"
    )
    keywords = {arg.arg for arg in function.args.args + function.args.kwonlyargs}
    assert set(_compat.FLASH_ATTENTION_KEYWORDS) <= keywords
    if not torch.cuda.is_available():
        assert _compat.flash_attention_varlen() is None


def test_vllm_keeps_the_cpu_copies_prefill_reads_instead_of_the_gpu():
    """The metadata builder hands prefill vLLM's CPU copies of the batch layout (no read-back
    from the GPU per layer). Without these fields it would silently fall back to the reads;
    this fails first."""
    import dataclasses

    from vllm.v1.attention.backend import CommonAttentionMetadata

    fields = {field.name for field in dataclasses.fields(CommonAttentionMetadata)}
    assert {"query_start_loc_cpu", "seq_lens_cpu_upper_bound"} <= fields
