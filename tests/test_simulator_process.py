"""The simulator in a child process: ``SimulatorProcess`` and ``python -m pipeline.simulator``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from pipeline.simulator import EndpointProfile, SimulatorProcess

USER = [{"role": "user", "content": "The parties signed on 1 May 2024. Payment is due."}]


def test_simulator_process_serves_reports_and_stops():
    profiles = {
        "gpt": EndpointProfile(script=["rate_limited"]),
        "claude": EndpointProfile(protocol="anthropic"),
    }
    with SimulatorProcess(profiles) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        assert sim.base_url("gpt") == f"{sim.url}/gpt/v1"
        assert sim.base_url("claude") == f"{sim.url}/claude"
        gpt = openai.OpenAI(base_url=sim.base_url("gpt"), api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            gpt.chat.completions.create(model="m", messages=USER)
        reply = gpt.chat.completions.create(model="m", messages=USER)
        claude = anthropic.Anthropic(base_url=sim.base_url("claude"), api_key="k", max_retries=0)
        message = claude.messages.create(model="c", max_tokens=100, messages=USER)
        mistral_url = sim.add_endpoint("later", EndpointProfile(protocol="mistral"))
        assert mistral_url == f"{sim.url}/later"

        stats = sim.stats()
        assert stats["gpt"]["by_fault"] == {"rate_limited": 1, "none": 1}
        assert stats["claude"]["by_status"] == {"200": 1}
        assert sim.tokens_served("gpt") == (
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
        assert sim.tokens_served("claude") == (
            message.usage.input_tokens,
            message.usage.output_tokens,
        )
        assert [r.status for r in sim.requests("gpt")] == [429, 200]
        sim.reset()
        assert sim.requests() == [] and sim.stats() == {}
        process = sim._process
    assert process is not None and process.returncode is not None
    with pytest.raises(RuntimeError):
        _ = sim.url


def _start_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"eu": {"protocol": "mistral"}, "us": {}}))
    command = [sys.executable, "-m", "pipeline.simulator", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--profiles", str(profiles), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def _clean_up(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_cli_prints_urls_and_exits_on_signals(tmp_path, sig):
    process, ready = _start_cli(tmp_path)
    try:
        url = str(ready["url"])
        assert url.startswith("http://127.0.0.1:")
        assert ready["base_urls"] == {"eu": f"{url}/eu", "us": f"{url}/us/v1"}
        c = openai.OpenAI(base_url=f"{url}/us/v1", api_key="k", max_retries=0)
        assert c.chat.completions.create(model="m", messages=USER).choices
        process.send_signal(sig)
        assert process.wait(timeout=10) == 0
    finally:
        _clean_up(process)


def test_module_cli_exits_when_its_parent_goes_away(tmp_path):
    process, _ = _start_cli(tmp_path, "--watch-stdin")
    try:
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        _clean_up(process)
