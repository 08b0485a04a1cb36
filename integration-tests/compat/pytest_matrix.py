"""pytest plugin: which features an adapter's tests proved, for the compatibility matrix.

Tests declare what they prove with ``@pytest.mark.feature("decode", "prefix cache", ...)``.
Loaded with ``-p pytest_matrix`` (nox puts this folder on PYTHONPATH) and given
``COMPAT_RECORD_OUT`` (a JSON path), ``COMPAT_RECORD_ENGINE`` (``name==version``) and
``COMPAT_RECORD_PACKAGE`` (not ``TQ_*``: tq refuses environment variables it does not know), it
writes one record per session: package, engine, python, torch, and per feature "pass" (every
test marked with it passed), "fail" (one failed) or "skip" (all skipped). build_matrix.py turns
the records into docs/compatibility.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform

import pytest

_OUTCOMES: dict[str, list[str]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "feature(*names): what this test proves, for the matrix")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    item_features = getattr(report, "tq_features", ())
    if not item_features:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "skip" if report.skipped else ("pass" if report.passed else "fail")
        for name in item_features:
            _OUTCOMES.setdefault(name, []).append(outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    names = [name for marker in item.iter_markers("feature") for name in marker.args]
    report.tq_features = tuple(names)


def _summary(outcomes: list[str]) -> str:
    if "fail" in outcomes:
        return "fail"
    if all(outcome == "skip" for outcome in outcomes):
        return "skip"
    return "pass"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("COMPAT_RECORD_OUT")
    if not path:
        return
    import torch

    engine, _, version = os.environ.get("COMPAT_RECORD_ENGINE", "==").partition("==")
    package = os.environ.get("COMPAT_RECORD_PACKAGE", "")
    record = {
        "package": package,
        "engine": engine,
        "engine_version": version,
        "device": "CPU",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "features": {name: _summary(outcomes) for name, outcomes in sorted(_OUTCOMES.items())},
    }
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
