"""The run report in a real headless browser: Debian's Chromium, driven over DevTools.

Two nights run against the simulator (one endpoint answers some calls with HTTP 429, and
some documents have no allowed endpoint), the report is written, and Chromium loads it from
disk: no console error, no request but the file itself, and every chart of every section
drawn (non-zero boxes). A screenshot stays in the test's tmp_path. A root with one quiet
run shows "none" notes where there is nothing to draw.

Chromium comes from `.ci/chromium.sh` (`make test` runs it); without it these tests fail
and say so. ``DOCROUTE_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from pipeline.config import load_config
from pipeline.report import ReportError, gather, limits_from_config, render, write_report
from pipeline.simulator import SimulatorServer
from pipeline.store import Store
from tests.test_batch_mode import config, corpus, provider
from tests.test_incremental import night

SECTIONS = ("spend", "outcomes", "latency", "quota", "budget", "documents", "nights")


class Chromium:
    """A headless Chromium on a loopback DevTools port, and one page to load files in.

    ``with Chromium() as browser: page = browser.load(path)``; ``page["errors"]`` lists
    console errors and exceptions, ``page["requests"]`` every URL the page asked for.
    """

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_chromium()
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="docroute-chromium-")
        args = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--disable-background-networking", "--disable-component-update",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}", "about:blank"]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = self._port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._ws: ClientConnection = connect(page["webSocketDebuggerUrl"], max_size=None)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        self._ws.close()
        self._proc.terminate()
        self._proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _port(self) -> int:
        """The port Chromium chose, from the file it writes once DevTools listens."""
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self._proc.poll() is not None:
                said = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"chromium exited: {said[-800:]}")
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port within 30 s ({self.binary})")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events seen meanwhile are kept)."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self._events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self._events):
            self._events.append(json.loads(self._ws.recv(timeout=deadline - time.monotonic())))

    def load(self, path: Path, width: int = 1100) -> dict[str, Any]:
        """Open ``path``; its console errors, the URLs it requested, and its page height."""
        self._events.clear()
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="1")  # flush what the load logged
        errors = [e for e in self._events if _is_error(e)]
        requests = [e["params"]["request"]["url"] for e in self._events
                    if e.get("method") == "Network.requestWillBeSent"]  # fmt: skip
        return {"errors": errors, "requests": requests, "height": self.eval(HEIGHT)}

    def eval(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, out: Path, width: int, height: int, scale: float = 1.0) -> Path:
        """A PNG of the page's top ``width`` x ``height`` CSS pixels, at ``scale``."""
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": scale}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)  # fmt: skip
        out.write_bytes(base64.b64decode(shot["data"]))
        return out


HEIGHT = "document.documentElement.scrollHeight"

# Per section: its declared chart count, its <svg>s, and per <svg> its box and how many of
# its shapes have a non-empty box (a chart that drew nothing has none).
CHARTS = """[...document.querySelectorAll('section')].map(s => ({
  id: s.id, declared: +s.dataset.charts, none: s.querySelectorAll('.none').length,
  svgs: [...s.querySelectorAll('svg')].map(g => {
    const box = g.getBoundingClientRect();
    const drawn = [...g.querySelectorAll('path, use, rect, line')]
      .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
    return {width: box.width, height: box.height, drawn,
            ids: [...g.querySelectorAll('[id]')].map(e => e.id)};
  })}))"""


def _is_error(event: dict[str, Any]) -> bool:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Runtime.consoleAPICalled":
        return bool(params.get("type") in ("error", "assert"))
    return method == "Log.entryAdded" and params["entry"]["level"] == "error"


def find_chromium() -> str:
    """The browser to drive: ``DOCROUTE_CHROMIUM``, else Debian's ``chromium``; else fail."""
    found = os.environ.get("DOCROUTE_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "chromium is not installed: run `.ci/chromium.sh` as root (what `make test` does; "
            "it runs `apt-get install -y chromium`), or set DOCROUTE_CHROMIUM to a binary",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium() as chromium:
        yield chromium


def two_nights(tmp_path: Path) -> Path:
    """Two full nights over one root: EU and US documents, an endpoint that sometimes
    answers 429, and documents in a folder no endpoint may serve (``ch/``)."""
    corpus(tmp_path / "corpus", {"eu": 6, "us": 6, "ch": 2})
    endpoints = [
        provider("sim-eu", "eu", "gpt-4.1-mini") | {"rate_limits": {"rpm": 600, "tpm": 90_000}},
        provider("sim-us", "us", "gpt-4.1-mini", rate_429=0.4, seed=7),
    ]
    path = config(
        tmp_path,
        endpoints,
        routing={"mode": "sync"},
        run_usd=0.05,
        reuse={"across_runs": False},  # both nights pay: the trend has two costs
    )
    night(path, "n1")
    night(path, "n2")
    return path


def test_the_report_renders_every_chart_in_chromium(
    tmp_path: Path, sim_env: SimulatorServer, browser: Chromium
) -> None:
    path = two_nights(tmp_path)
    cfg = load_config(path)
    store = Store(cfg.output.root)
    throttled = store.read(
        "SELECT count(*) FROM ledger WHERE run_id = 'n2' AND http_status = 429"
    ).rows[0][0]
    assert throttled > 0, "the simulator answered no 429: the test would prove nothing"

    out = write_report(store, "n2", tmp_path / "report.html", limits=limits_from_config(cfg))
    page = browser.load(out)
    assert page["errors"] == []
    assert page["requests"] == [out.resolve().as_uri()], "the report fetched something"
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", out.read_text())
    assert links and all(link.startswith("#") for link in links), "a link leaves the page"

    sections = {s["id"]: s for s in browser.eval(CHARTS)}
    assert tuple(sections) == SECTIONS
    for name, s in sections.items():
        assert s["declared"] >= 1 and len(s["svgs"]) == s["declared"], name
        for chart in s["svgs"]:
            assert chart["width"] > 100 and chart["height"] > 50, name
            assert chart["drawn"] > 10, f"{name}: a chart drew nothing"
    assert len(sections["outcomes"]["svgs"]) == 2  # attempt outcomes, and the reasons
    quota_ids = sections["quota"]["svgs"][0]["ids"]
    assert "throttled-sim-us" in quota_ids, "the 429s are not marked"
    assert {"limit-0-sim-eu", "limit-1-sim-eu"} <= set(quota_ids), "no RPM/TPM line"
    assert not any(i.startswith("throttled-sim-eu") for i in quota_ids)

    shot = browser.screenshot(tmp_path / "report.png", 1100, page["height"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_names_its_figures_from_the_ledger(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    path = two_nights(tmp_path)
    store = Store(load_config(path).output.root)
    figures = gather(store, "n2")
    ledger = store.read(
        "SELECT sum(cost_usd), count(*) FILTER (WHERE http_status = 429) FROM ledger "
        "WHERE run_id = 'n2'"
    ).rows[0]
    assert sum(row[2] for row in figures.spend) == pytest.approx(ledger[0])
    assert figures.burn[-1][1] == pytest.approx(ledger[0])  # burn-down ends at the spend
    assert sum(row[4] for row in figures.minutes) == ledger[1]
    assert [n[0] for n in figures.nights] == ["n1", "n2"]
    reasons = dict(figures.reasons)
    assert sum(reasons.values()) == 2 and all(k.startswith(("failed", "skipped")) for k in reasons)
    paths = [d[0] for d in figures.documents]
    assert paths and not any("/ch/" in p for p in paths), "an unsent document cost money"
    costs = [d[1] for d in figures.documents]
    assert costs == sorted(costs, reverse=True)
    assert render(figures, {}) == render(figures, {}), "the same figures, other bytes"


def test_a_single_quiet_run_says_none_where_there_is_nothing_to_draw(
    tmp_path: Path, sim_env: SimulatorServer, browser: Chromium
) -> None:
    corpus(tmp_path / "corpus", {"eu": 3})
    path = config(tmp_path, [provider("sim-eu", "eu", "gpt-4.1-mini")], routing={"mode": "sync"})
    night(path, "only")
    out = write_report(Store(tmp_path / "out"), "only", tmp_path / "r" / "report.html")
    page = browser.load(out)
    assert page["errors"] == []
    sections = {s["id"]: s for s in browser.eval(CHARTS)}
    assert sections["nights"]["declared"] == 0 and sections["nights"]["svgs"] == []
    assert sections["nights"]["none"] == 1
    assert sections["quota"]["none"] == 1, "no 429: the quota section says none"
    assert sections["outcomes"]["none"] == 1, "every chunk succeeded: the reasons say none"
    for name in ("spend", "latency", "quota", "budget", "documents"):
        assert len(sections[name]["svgs"]) == 1
        assert sections[name]["svgs"][0]["drawn"] > 10, name
    html = out.read_text()
    assert "<script" not in html and "<link" not in html and "@import" not in html


def test_an_unknown_run_is_an_error_naming_the_runs_there(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    corpus(tmp_path / "corpus", {"eu": 1})
    night(config(tmp_path, [provider("sim-eu", "eu", "gpt-4.1-mini")]), "real-run")
    with pytest.raises(ReportError, match=r"no run 'nope' in .*latest runs: real-run"):
        write_report(Store(tmp_path / "out"), "nope", tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_every_run_writes_its_report_and_links_it_from_its_prefect_artifacts(
    tmp_path: Path, sim_env: SimulatorServer
) -> None:
    """The end of a flow run: the report in ``<root>/reports/``, and three artifacts (the
    summary, a table per endpoint, a link to the report)."""
    from prefect.client.orchestration import get_client

    from flows.nightly import nightly_batch

    corpus(tmp_path / "corpus", {"eu": 3, "us": 2})
    endpoints = [provider("sim-eu", "eu", "gpt-4.1-mini"), provider("sim-us", "us", "gpt-4.1-mini")]
    path = config(tmp_path, endpoints, routing={"mode": "sync"})
    summary = asyncio.run(nightly_batch(config_path=str(path), run_id="a1"))
    report = tmp_path / "out" / "reports" / "a1.html"
    assert summary["report"] == str(report) and "<svg" in report.read_text()

    async def artifacts() -> dict[str, Any]:
        async with get_client() as client:
            # this run's (the harness's server holds every test's artifacts)
            found = await client.read_artifacts()
            return {a.key: a for a in found if a.key and "run a1" in (a.description or "")}

    found = asyncio.run(artifacts())
    assert "a1" in str(found["docroute-run-summary"].data)
    table = found["docroute-endpoints"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["provider"] for r in rows} == {"sim-eu", "sim-us"}
    assert sum(r["attempts"] for r in rows) == len(sim_env.requests())
    assert report.resolve().as_uri() in str(found["docroute-run-report"].data)
    # the same report on demand, from the command line
    from flows.cli import main

    out = tmp_path / "again.html"
    assert main(["report", "a1", "--config", str(path), "--out", str(out)]) == 0
    assert out.read_text().count("<svg") == report.read_text().count("<svg")
    assert main(["report", "nope", "--config", str(path)]) == 2
