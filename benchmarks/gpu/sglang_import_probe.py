"""Import every module SGLang 0.5.17's offline Engine touches on the path used here
(attention_backend="triton", fp8 KV cache, sampling_backend="pytorch",
skip_tokenizer_init=True, load_format="dummy", a Llama model) and print the top-level
modules that are missing.  A first check on the GPU machine after unpack_sglang.sh:

    source /tmp/sgsite/env.sh && python3 benchmarks/gpu/sglang_import_probe.py

Prints one line per failing module ("ERR module Type: message") and, last,
"MISSING {top_level_module: [modules that needed it]}" -- empty dict means the payload
is complete for this path.  Exit status 0 iff nothing is missing and nothing failed.

--cpu-fake: for a machine with no GPU (the staging machine).  Pretends a Hopper GPU
(torch.cuda.is_available() -> True, capability (9, 0), torch.version.cuda "13.0") and
gives sgl_kernel a stand-in ``common_ops`` module so its Python layer imports; only
Python-level imports are then checked (no .so of sgl_kernel is loaded).  It needs a torch,
triton and transformers of its own there plus the payload's pure-Python packages; torchvision's
CUDA ops are let through.  Checked on 2026-11-28 with Python 3.11, torch 2.13 CPU, torchvision
0.28, transformers 5.17 and the same package versions as stage_sglang.sh: MISSING {}.
"""

import importlib
import sys
import traceback
import types

MODULES = [
    "sgl_kernel",
    "sglang",
    "sglang.srt.server_args",
    "sglang.srt.entrypoints.engine",
    "sglang.srt.entrypoints.EngineBase",
    "sglang.srt.managers.io_struct",
    "sglang.srt.managers.tokenizer_manager",
    "sglang.srt.managers.detokenizer_manager",
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.schedule_batch",
    "sglang.srt.managers.schedule_policy",
    "sglang.srt.managers.tp_worker",
    "sglang.srt.managers.data_parallel_controller",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.model_executor.forward_batch_info",
    "sglang.srt.model_executor.cuda_graph_config",
    "sglang.srt.model_executor.runner.eager_runner",
    "sglang.srt.model_executor.runner.decode_cuda_graph_runner",
    "sglang.srt.model_executor.runner.prefill_cuda_graph_runner",
    "sglang.srt.model_executor.runner_backend.full_cuda_graph_backend",
    "sglang.srt.model_loader",
    "sglang.srt.model_loader.loader",
    "sglang.srt.model_loader.weight_utils",
    "sglang.srt.models.llama",
    "sglang.srt.configs.model_config",
    "sglang.srt.layers.attention.attention_registry",
    "sglang.srt.layers.attention.base_attn_backend",
    "sglang.srt.layers.attention.triton_backend",
    "sglang.kernels.ops.attention.decode_attention",
    "sglang.kernels.ops.attention.extend_attention",
    "sglang.kernels.ops.attention.metadata",
    "sglang.kernels.ops.kvcache.kv_indices",
    "sglang.srt.layers.radix_attention",
    "sglang.srt.layers.logits_processor",
    "sglang.srt.layers.sampler",
    "sglang.srt.layers.layernorm",
    "sglang.srt.layers.activation",
    "sglang.srt.layers.rotary_embedding",
    "sglang.srt.layers.linear",
    "sglang.srt.layers.vocab_parallel_embedding",
    "sglang.srt.layers.quantization",
    "sglang.srt.layers.quantization.fp8",
    "sglang.srt.distributed.parallel_state",
    "sglang.srt.mem_cache.memory_pool",
    "sglang.srt.mem_cache.allocator",
    "sglang.srt.mem_cache.radix_cache",
    "sglang.srt.sampling.sampling_params",
    "sglang.srt.sampling.sampling_batch_info",
    "sglang.srt.sampling.penaltylib",
    "sglang.srt.constrained.base_grammar_backend",
    "sglang.srt.layers.torchao_utils",
    "sglang.srt.utils.torch_memory_saver_adapter",
    "sglang.kernels.jit.utils",
    "sglang.kernels.ops.kvcache.kvcache",
    "tvm_ffi.cpp",
    "flashinfer",
    "xgrammar",
    "torchvision.io",
]


def fake_hopper() -> None:
    import torch

    torch.version.cuda = "13.0"
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H200"
    props = types.SimpleNamespace(
        major=9, minor=0, name="NVIDIA H200", total_memory=141 << 30, multi_processor_count=132
    )
    torch.cuda.get_device_properties = lambda *a, **k: props
    # torchvision's CUDA _C cannot load here, so its ops do not exist; let its
    # fake-kernel registrations through instead of failing the import.
    real_register_fake = torch.library.register_fake

    def register_fake(op, *a, **k):
        deco = real_register_fake(op, *a, **k)
        if not callable(deco):
            return deco

        def tolerant(fn):
            try:
                return deco(fn)
            except RuntimeError:
                return fn

        return tolerant

    torch.library.register_fake = register_fake
    # sgl_kernel falls back to `import common_ops` when its sm90/sm100 .so cannot load.
    stub = types.ModuleType("common_ops")
    stub.__file__ = "<stand-in>"
    sys.modules["common_ops"] = stub


def main() -> int:
    if "--cpu-fake" in sys.argv:
        fake_hopper()
    verbose = "-v" in sys.argv
    missing: dict[str, list[str]] = {}
    errors = 0
    for m in MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            top = (e.name or "?").split(".")[0]
            missing.setdefault(top, []).append(m)
            if verbose:
                traceback.print_exc()
        except Exception as e:
            cause = e
            while cause is not None and not isinstance(cause, ModuleNotFoundError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:  # e.g. flashinfer re-raising "install cuda-python"
                top = (cause.name or "?").split(".")[0]
                missing.setdefault(top, []).append(m)
                continue
            errors += 1
            print("ERR", m, type(e).__name__, str(e)[:300])
            if verbose:
                traceback.print_exc()
    print("MISSING", missing)
    return 0 if not missing and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
