"""Where a result came from: machine, versions and git SHA, attached to every JSON we write."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import subprocess

import torch


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (pip name), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record() -> dict:
    """A JSON-able description of this run's machine and software."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "git_sha": _git_sha(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "versions": {
            name: installed_version(name)
            for name in ("tq-core", "numpy", "transformers", "gguf", "triton")
        },
    }
