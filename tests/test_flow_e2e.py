"""The nightly flow end to end: real Prefect (test harness), real SDK, simulator over loopback,
real Parquet and DuckDB. Every assertion reads the stored data, as a user would."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from flows.nightly import nightly_batch
from pipeline.store import Store
from tests.conftest import EXAMPLES, sample_config_data, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(config: Path, **kw: Any) -> dict[str, Any]:
    return asyncio.run(nightly_batch(config_path=str(config), **kw))


def _one(store: Store, sql: str, *params: Any) -> Any:
    return store.read(sql, list(params)).rows[0][0]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_sample_corpus_end_to_end(tmp_path: Path, sim_env: Any) -> None:
    config = write_config(tmp_path, sample_config_data())
    summary = _run(config)
    store = Store(tmp_path / "out")
    run_id = summary["run_id"]

    # One result row per chunk.
    n_chunks = _one(store, "SELECT count(*) FROM chunks WHERE run_id = ?", run_id)
    assert n_chunks >= 40
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = ?", run_id) == n_chunks
    assert (
        _one(store, "SELECT count(DISTINCT chunk_id) FROM results WHERE run_id = ?", run_id)
        == n_chunks
    )

    # Residency: no attempt ever left the chunk's allowed regions; EU chunks saw only EU.
    outside = _one(
        store,
        """
        SELECT count(*) FROM ledger l JOIN chunks c USING (run_id, chunk_id)
        WHERE l.run_id = ? AND l.provider IS NOT NULL AND NOT list_contains(c.regions, l.region)""",
        run_id,
    )
    assert outside == 0
    eu_regions = store.read(
        """
        SELECT DISTINCT l.region FROM ledger l JOIN chunks c USING (run_id, chunk_id)
        WHERE l.run_id = ? AND c.path LIKE 'eu/%' AND l.provider IS NOT NULL""",
        [run_id],
    ).rows
    assert eu_regions == [("eu",)]

    # Budget: the ledger total is within the cap.
    spend = _one(store, "SELECT sum(cost_usd) FROM ledger WHERE run_id = ?", run_id)
    assert 0 < spend <= 0.50
    assert spend == pytest.approx(summary["spend_usd"])

    # At least one chunk got an invalid answer at one provider and succeeded at another.
    rerouted = _one(
        store,
        """
        SELECT count(*) FROM results r WHERE r.run_id = ? AND r.status = 'succeeded' AND EXISTS (
            SELECT 1 FROM ledger l WHERE l.run_id = r.run_id AND l.chunk_id = r.chunk_id
              AND l.outcome = 'invalid_output' AND l.provider <> r.provider)""",
        run_id,
    )
    assert rerouted >= 1

    # Swiss documents have no endpoint: they fail with no_route and were never sent.
    ch = store.read(
        """SELECT r.status, r.reason, c.text FROM results r JOIN chunks c USING (run_id, chunk_id)
                       WHERE r.run_id = ? AND c.path LIKE 'ch/%'""",
        [run_id],
    ).rows
    assert ch and {(s, r) for s, r, _ in ch} == {("failed", "no_route")}
    served = {r.prompt_sha256 for r in sim_env.requests()}
    assert not any(_sha(text) in served for _, _, text in ch)

    # The simulator's own count of tokens served equals the ledger's (the oracle).
    prompt, completion = sim_env.tokens_served()
    tokens = store.read(
        "SELECT sum(input_tokens), sum(output_tokens) FROM ledger WHERE run_id = ?", [run_id]
    )
    assert tokens.rows[0] == (prompt, completion)

    # Offsets are exact: chunk text is the document's text at [char_start, char_end).
    for path, start, end, text in store.read(
        "SELECT path, char_start, char_end, text FROM chunks WHERE run_id = ?", [run_id]
    ).rows:
        doc = (EXAMPLES / "corpus" / path).read_text(encoding="utf-8")
        assert doc[start:end] == text

    # The run record and summary agree with the data.
    run = store.read(
        "SELECT status, chunks, succeeded, failed, skipped, spend_usd FROM runs WHERE run_id = ?",
        [run_id],
    ).to_dicts()[0]
    assert run["status"] == "completed_with_failures"
    assert run["chunks"] == n_chunks == summary["chunks"]
    assert run["succeeded"] + run["failed"] + run["skipped"] == n_chunks
    assert run["spend_usd"] == pytest.approx(spend)


def test_tiny_budget_skips_then_rerun_completes_without_rebilling(
    tmp_path: Path, sim_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sample_config_data()
    data["budget"]["run_usd"] = 0.003
    config = write_config(tmp_path, data)
    parent = _run(config)
    store = Store(tmp_path / "out")
    pid = parent["run_id"]

    spend = _one(store, "SELECT sum(cost_usd) FROM ledger WHERE run_id = ?", pid)
    assert spend <= 0.003
    by_status = dict(
        store.read("SELECT status, count(*) FROM results WHERE run_id = ? GROUP BY 1", [pid]).rows
    )
    assert by_status.get("succeeded", 0) > 0
    assert by_status.get("skipped", 0) > 0
    assert (
        _one(
            store,
            "SELECT count(*) FROM results WHERE run_id = ? AND status = 'skipped' "
            "AND reason <> 'budget_exhausted'",
            pid,
        )
        == 0
    )

    succeeded_texts = {
        t
        for (t,) in store.read(
            "SELECT c.text FROM results r JOIN chunks c USING (run_id, chunk_id) "
            "WHERE r.run_id = ? AND r.status = 'succeeded'",
            [pid],
        ).rows
    }
    sim_env.reset()

    assert main(["rerun", pid, "--config", str(config), "--budget", "2"]) == 0
    out = capsys.readouterr().out
    child = store.read("SELECT run_id FROM runs WHERE parent_run_id = ?", [pid]).rows
    assert len(child) == 1
    cid = child[0][0]
    assert f"run {cid}" in out

    # The child processed exactly the parent's failed and skipped chunks.
    redo = {
        c
        for (c,) in store.read(
            "SELECT chunk_id FROM results WHERE run_id = ? AND status <> 'succeeded'", [pid]
        ).rows
    }
    done = {c for (c,) in store.read("SELECT chunk_id FROM results WHERE run_id = ?", [cid]).rows}
    assert done == redo
    # Now only the no-route chunks are left undone; the skipped ones all succeeded.
    left = store.read(
        "SELECT DISTINCT reason FROM results WHERE run_id = ? AND status <> 'succeeded'", [cid]
    ).rows
    assert left == [("no_route",)]
    # No chunk that had succeeded was sent again.
    served = {r.prompt_sha256 for r in sim_env.requests()}
    assert served and not ({_sha(t) for t in succeeded_texts} & served)


def test_bad_documents_get_error_rows_and_the_run_goes_on(tmp_path: Path, sim_env: Any) -> None:
    corpus = tmp_path / "corpus" / "eu"
    corpus.mkdir(parents=True)
    (corpus / "good.md").write_text("# Policy\n\nAll invoices are paid within 30 days in EUR.\n")
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (corpus / "huge.txt").write_bytes(b"word " * 300_000)
    (corpus / "latin1.txt").write_bytes("Caf\xe9 contract, signed in M\xfcnchen.".encode("latin-1"))
    data = sample_config_data()
    data["corpus"]["max_file_mb"] = 1
    config = write_config(tmp_path, data, corpus=tmp_path / "corpus")
    summary = _run(config)
    store = Store(tmp_path / "out")
    docs = dict(
        store.read(
            "SELECT path, coalesce(reason, status) FROM documents WHERE run_id = ?",
            [summary["run_id"]],
        ).rows
    )
    assert docs == {
        "eu/good.md": "ok",
        "eu/latin1.txt": "ok",
        "eu/empty.txt": "empty",
        "eu/blob.txt": "binary",
        "eu/huge.txt": "too_large",
    }
    assert summary["document_errors"] == 3
    assert summary["succeeded"] == 2


def test_api_keys_never_reach_data_logs_or_artifacts(
    tmp_path: Path,
    simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from pipeline.simulator import EndpointProfile

    secret = "live-secret-Zq8T4nW2vR7yK1mP9sXc3L"
    monkeypatch.setenv("DOCROUTE_TEST_EU_KEY", secret)
    monkeypatch.setenv("DOCROUTE_SIMULATOR_URL", simulator.url)
    # A careless endpoint that rejects the key and echoes it back in full.
    leaky = simulator.add_endpoint(
        "leaky-eu",
        EndpointProfile(api_key="expected-secret-something-else", echo_key_in_errors=True),
    )
    data = sample_config_data()
    data["providers"].insert(
        0,
        {
            "name": "leaky-eu",
            "kind": "openai",
            "region": "eu",
            "base_url": leaky,
            "api_key_env": "DOCROUTE_TEST_EU_KEY",
            "simulate": "never",
            "models": [{"id": "gpt-4.1-nano", "input_per_mtok": 0.001, "output_per_mtok": 0.001}],
        },
    )
    config = write_config(tmp_path, data)
    summary = _run(config)
    store = Store(tmp_path / "out")
    auth_errors = _one(
        store,
        "SELECT count(*) FROM ledger WHERE run_id = ? AND outcome = 'auth_error'",
        summary["run_id"],
    )
    # Calls already in flight when the first 401 lands each get one; then the provider is disabled.
    assert 1 <= auth_errors <= data["routing"]["concurrency"]
    assert summary["failed"] == 2 and summary["skipped"] == 0  # only the Swiss no-route chunks
    assert secret in simulator_last_auth_message(simulator, leaky), (
        "the endpoint must really leak it"
    )

    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    for table in ("ledger", "results", "runs", "documents"):
        rows = store.read(f"SELECT * FROM {table}").rows
        assert secret not in repr(rows), table
    captured = capfd.readouterr()
    assert secret not in captured.out and secret not in captured.err
    artifacts = asyncio.run(_artifact_texts())
    assert any(summary["run_id"] in a for a in artifacts)
    assert not any(secret in a for a in artifacts)


async def _artifact_texts() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [str(a.data) for a in await client.read_artifacts()]


def simulator_last_auth_message(simulator: Any, base_url: str) -> str:
    """Ask the leaky endpoint directly, as the adapter did, and return its error message."""
    import openai

    client = openai.OpenAI(
        api_key="live-secret-Zq8T4nW2vR7yK1mP9sXc3L", base_url=base_url, max_retries=0
    )
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    except openai.AuthenticationError as exc:
        return str(exc)
    finally:
        client.close()
    return ""


def test_every_format_flows_through_a_run_with_pages_and_jsonl_fields(
    tmp_path: Path, sim_env: Any
) -> None:
    import docx
    from reportlab.pdfgen import canvas

    eu = tmp_path / "corpus" / "eu"
    eu.mkdir(parents=True)
    pdf = canvas.Canvas(str(eu / "report.pdf"))
    for page in (1, 2, 3):
        pdf.drawString(72, 720, f"Page {page} of the audit report. Findings are listed in EUR.")
        pdf.showPage()
    pdf.save()
    document = docx.Document()
    document.add_heading("Data processing agreement", level=1)
    document.add_paragraph("The processor keeps personal data in the EU for 30 days.")
    document.save(str(eu / "dpa.docx"))
    (eu / "page.html").write_text(
        "<html><body><nav>Home | About</nav><main><h1>Retention policy</h1>"
        "<p>Invoices are kept for ten years.</p></main><script>track()</script></body></html>"
    )
    (eu / "notes.jsonl").write_text(
        '{"ref": "n1", "body": "Vendor onboarding needs a signed NDA."}\nnot json\n'
    )
    data = sample_config_data()
    data["corpus"].pop("include")  # the default: every supported format
    data["corpus"]["jsonl"] = {"text_field": "body", "id_field": "ref"}
    config = write_config(tmp_path, data, corpus=tmp_path / "corpus")
    summary = _run(config)
    store = Store(tmp_path / "out")
    rid = summary["run_id"]
    docs = dict(store.read("SELECT path, status FROM documents WHERE run_id = ?", [rid]).rows)
    assert docs == {
        "eu/report.pdf": "ok",
        "eu/dpa.docx": "ok",
        "eu/page.html": "ok",
        "eu/notes.jsonl#n1": "ok",  # each record its own document, named by its id_field
    }
    texts = dict(
        store.read(
            "SELECT path, string_agg(text, ' ') FROM chunks WHERE run_id = ? GROUP BY 1", [rid]
        ).rows
    )
    assert "Home | About" not in texts["eu/page.html"] and "track()" not in texts["eu/page.html"]
    assert texts["eu/notes.jsonl#n1"] == "Vendor onboarding needs a signed NDA."
    (pages,) = store.read(
        "SELECT pages FROM chunks WHERE run_id = ? AND path = 'eu/report.pdf'", [rid]
    ).rows[0]
    assert list(pages) == [1, 2, 3]
    assert summary["succeeded"] == summary["chunks"] == 4


def test_worst_case_bookings_are_shown_in_the_summary_and_the_audit(
    tmp_path: Path, sim_env: Any
) -> None:
    """Calls that time out after the request left are booked at their reserved worst case;
    the summary and `docroute audit` say how much of the spend that is."""
    from pipeline.audit import audit

    data = sample_config_data()
    data["routing"]["request_timeout_s"] = 1.0
    for p in data["providers"]:
        if p["name"] == "llama-eu":  # the cheapest EU endpoint: most EU chunks go there
            p["simulator"] = {"rate_timeout": 0.3, "hang_s": 3}
    summary = _run(write_config(tmp_path, data))
    store = Store(tmp_path / "out")
    run_id = summary["run_id"]
    rows = store.read(
        "SELECT count(*), sum(cost_usd), count(*) FILTER (cost_usd = reserved_usd AND "
        "cost_usd > 0) FROM ledger WHERE run_id = ? AND outcome = 'uncertain'",
        [run_id],
    ).rows[0]
    assert rows[0] >= 1 and rows[0] == rows[2], "every uncertain call at its worst case"
    assert summary["spend_worst_case_usd"] == pytest.approx(rows[1])
    assert summary["worst_case_attempts"]["uncertain"] == rows[0]
    report = audit(store, run_id)
    assert report.ok, report.text()
    (check,) = [c for c in report.checks if c.name == "worst_case"]
    assert f"{rows[0]} uncertain" in check.detail


def test_cut_off_answers_tell_which_setting_to_raise(tmp_path: Path, sim_env: Any) -> None:
    data = sample_config_data()
    data["task"]["max_output_tokens"] = 40
    summary = _run(write_config(tmp_path, data))
    reasons = summary["not_succeeded_by_reason"]
    assert reasons.get("output_truncated", 0) >= 1
    advice = " ".join(summary["advice"])
    assert "raise task.max_output_tokens (now 40)" in advice
    store = Store(tmp_path / "out")
    dearer = _one(
        store,
        "SELECT count(*) FROM ledger WHERE run_id = ? AND outcome = 'output_truncated' "
        "GROUP BY chunk_id ORDER BY 1 DESC LIMIT 1",
        summary["run_id"],
    )
    assert dearer <= 2, "a cut-off answer is retried once, never rerouted down the list"
