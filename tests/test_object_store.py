"""Output roots on an object store: S3 (moto's server on 127.0.0.1, through pyarrow's real
S3 client) and ``file://`` URIs (the same remote code path on a plain folder). Every
assertion reads the stored objects or the data through docroute's own readers."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from flows.cli import main
from flows.nightly import nightly_batch, rerun_failed
from pipeline.audit import audit
from pipeline.store import Store, StoreError
from pipeline.store.fs import RootURI
from pipeline.store.tables import to_arrow
from tests.conftest import sample_config_data, write_config
from tests.test_housekeeping import _healthy_run, _ledger, _record


@dataclasses.dataclass
class S3:
    uri: str  # the root docroute is given
    fs: pafs.FileSystem  # the test's own view of the bucket
    bucket: str
    key_id: str
    secret: str

    def objects(self) -> dict[str, pafs.FileInfo]:
        selector = pafs.FileSelector(self.bucket, recursive=True)
        infos = self.fs.get_file_info(selector)
        return {i.path: i for i in infos if i.type == pafs.FileType.File}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"endpoint_override={host}:{port}&scheme=http"
    server.stop()


@pytest.fixture
def s3(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket, credentials in the environment only, a private local state folder."""
    key_id = "AKIA" + secrets.token_hex(8).upper()
    secret = "s3cr3t-" + secrets.token_hex(16)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DOCROUTE_STATE_DIR", str(tmp_path / "state"))
    bucket = "docroute-" + secrets.token_hex(4)
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{s3_server}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    return S3(f"s3://{bucket}/nightly?{s3_server}", fs, bucket, key_id, secret)


def _s3_config(tmp_path: Path, root: str, **routing: Any) -> Path:
    data = sample_config_data()
    data["routing"].update(routing)
    path = write_config(tmp_path, data)
    data = yaml.safe_load(path.read_text())
    data["output"] = {"root": root}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _one(store: Store, sql: str, *params: Any) -> Any:
    return store.read(sql, list(params)).rows[0][0]


# -- a nightly run on S3 ----------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_nightly_run_rerun_sql_audit_and_compaction_all_on_s3(
    tmp_path: Path, sim_env: Any, s3: S3, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _s3_config(tmp_path, s3.uri, batch_size=10)
    summary = asyncio.run(nightly_batch(config_path=str(config), budget_usd=0.002))
    run_id = summary["run_id"]
    assert summary["chunks"] > 20 and summary["skipped"] > 0  # a small cap leaves work to redo
    assert not (tmp_path / "out").exists()  # nothing went to a local folder
    names = list(s3.objects())
    prefix = f"{s3.bucket}/nightly/"
    assert all(name.startswith(prefix) for name in names)
    assert f"{prefix}_catalog.json" in names and not any("catalog.duckdb" in n for n in names)
    assert not any("_journal" in n for n in names)  # journals and locks stay local
    assert (tmp_path / "state").is_dir()
    # The run compacted itself: a merged part replaced each table's batch parts.
    merged = [n for n in names if n.startswith(f"{prefix}results/{run_id}/") and "-m." in n]
    assert len(merged) == 1

    store = Store(s3.uri)
    chunks = _one(store, "SELECT count(*) FROM chunks WHERE run_id = ?", run_id)
    assert chunks == summary["chunks"]
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = ?", run_id) == chunks
    capsys.readouterr()
    sql = "SELECT count(*) AS n FROM results"
    assert main(["sql", sql, "--root", s3.uri, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(chunks)]
    assert main(["audit", run_id, "--root", s3.uri]) == 0
    assert "verdict: PASS" in capsys.readouterr().out

    child = asyncio.run(rerun_failed(parent_run_id=run_id, config_path=str(config), budget_usd=1.0))
    assert child["chunks"] == summary["skipped"] + summary["failed"]
    rows = store.read(
        "SELECT chunk_id, status FROM effective_results WHERE family_id = ?", [run_id]
    ).rows
    assert len(rows) == chunks == len({chunk for chunk, _ in rows})
    assert {status for _, status in rows} == {"succeeded", "failed"}  # failed: Swiss no_route
    latest = store.latest_run(child["run_id"])
    assert latest is not None and latest.parent_run_id == run_id

    # Replaced parts wait out the grace period, then go; no row is lost or doubled.
    parts_before = len(store.part_files())
    assert main(["compact", "--root", s3.uri]) == 0
    store.compact(grace_s=0)
    assert len(store.part_files()) < parts_before
    for table in ("results", "ledger", "chunks"):
        folder = f"{prefix}{table}/{run_id}/"
        assert len([n for n in s3.objects() if n.startswith(folder)]) == 1, table
    assert _one(store, "SELECT count(*) FROM results WHERE run_id = ?", run_id) == chunks
    assert _one(store, "SELECT count(*) FROM effective_results WHERE family_id = ?", run_id) == (
        chunks
    )
    assert _one(store, "SELECT count(*) - count(DISTINCT attempt_id) FROM ledger") == 0


# -- the same store on a file:// URI -----------------------------------------------------------


def test_a_file_uri_root_round_trips_through_the_remote_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCROUTE_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "out"
    store = Store(f"file://{folder}")
    assert store.remote is not None and str(store.root) == f"file://{folder}"
    _healthy_run(store, n=6)
    # An older part without today's last columns reads them as NULL.
    old = pa.table({"run_id": ["r0"], "chunk_id": ["old"], "attempt": [1]})
    (folder / "ledger" / "r0").mkdir(parents=True)
    pq.write_table(old, folder / "ledger" / "r0" / "part-00000001-0ld0ld00.parquet")
    assert store.read("SELECT attempt_id, chunk_id FROM ledger WHERE run_id = 'r0'").rows == [
        (None, "old")
    ]
    store.write_run(_record(status="running", updated_at=2e9))  # the latest record wins
    assert store.latest_run("r1").status == "running"  # type: ignore[union-attr]

    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(_one(store, "SELECT count(*) FROM ledger WHERE run_id = 'r1'"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        written = store.compact("r1")
    finally:
        stop.set()
        thread.join()
    assert written == 4  # runs (two records), chunks, results, ledger; prices had one part
    assert store.latest_run("r1").status == "running"  # type: ignore[union-attr]
    assert seen and set(seen) == {6}
    assert len(list((folder / "ledger" / "r1").glob("part-*.parquet"))) == 7  # 6 hidden + 1
    store.compact(grace_s=0)
    assert len(list((folder / "ledger" / "r1").glob("part-*.parquet"))) == 1
    assert _one(store, "SELECT count(*) FROM ledger WHERE run_id = 'r1'") == 6
    assert _one(store, "SELECT count(*) FROM effective_results WHERE family_id = 'r1'") == 6
    assert store.refresh_catalog() is None and not (folder / "catalog.duckdb").exists()
    assert store.query("SELECT count(*) FROM results").rows == [(6,)]
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert (folder / "_catalog.json").is_file()
    assert not (folder / "_journal").exists() and not (folder / "_catalog.lock").exists()
    assert audit(store, "r1").ok


def test_user_sql_on_a_remote_root_stays_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.store import ReadOnlyQueryError

    monkeypatch.setenv("DOCROUTE_STATE_DIR", str(tmp_path / "state"))
    store = Store(f"file://{tmp_path / 'out'}")
    store.write_rows("ledger", "r1", [_ledger(0)])
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for sql in (f"SELECT * FROM read_csv('{secret}')", "INSTALL httpfs", "COPY ledger TO 'x'"):
        with pytest.raises(ReadOnlyQueryError):
            store.query(sql)
    assert store.query("SELECT count(*) FROM ledger").rows == [(1,)]


# -- damaged parts on S3 ----------------------------------------------------------------------


def test_a_truncated_part_on_s3_is_quarantined_and_reported_by_audit(
    s3: S3, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(s3.uri)
    _healthy_run(store)
    folder = f"{s3.bucket}/nightly/results/r1/"
    victim = sorted(n for n in s3.objects() if n.startswith(folder))[1]
    with s3.fs.open_input_stream(victim) as fh:
        data = fh.read()
    with s3.fs.open_output_stream(victim) as out:
        out.write(data[: len(data) // 2])  # a half copy

    assert _one(store, "SELECT count(*) FROM results WHERE run_id = 'r1'") == 3
    name = victim.rpartition("/")[2]
    assert victim not in s3.objects()
    assert f"{s3.bucket}/nightly/_quarantine/results/r1/{name}" in s3.objects()
    assert [str(p) for p in store.quarantined()] == [f"_quarantine/results/r1/{name}"]

    code = main(["audit", "r1", "--root", s3.uri])
    out = capsys.readouterr().out
    assert code == 1
    assert "BREACH  parts_whole" in out and name in out
    assert "BREACH  one_result_per_chunk" in out


# -- credentials and unusable roots -----------------------------------------------------------


def test_credentials_from_the_environment_never_reach_the_root_logs_or_objects(
    s3: S3, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    # A URI carrying a secret-looking parameter is shown without it.
    shown = RootURI.of(f"{s3.uri}&secret_key={s3.secret}")
    assert s3.secret not in shown and shown == s3.uri
    store = Store(s3.uri)
    _healthy_run(store)
    victim = next(n for n in s3.objects() if "/results/r1/" in n)
    with s3.fs.open_output_stream(victim) as out:
        out.write(b"not parquet")  # a warning that names the part and the root
    store.refresh_catalog()
    assert main(["runs", "--root", s3.uri]) == 0
    assert main(["audit", "r1", "--root", s3.uri]) == 1
    assert main(["compact", "--root", s3.uri]) == 0

    assert s3.key_id not in str(store.root) and s3.secret not in repr(store)
    captured = capfd.readouterr()
    logs = caplog.text
    assert "quarantine" in logs and str(store.root) in captured.out + logs  # it was logged
    for text in (captured.out, captured.err, logs):
        assert s3.key_id not in text and s3.secret not in text
    objects = s3.objects()
    assert len(objects) > 10
    for path in objects:
        with s3.fs.open_input_stream(path) as fh:
            body = fh.read()
        assert s3.key_id.encode() not in body and s3.secret.encode() not in body, path
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert s3.secret.encode() not in path.read_bytes(), path


def test_an_unusable_root_is_refused_before_any_call(
    tmp_path: Path,
    s3: S3,
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(root: str) -> tuple[int, str]:
        code = main(["run", "--config", str(_s3_config(tmp_path, root))])
        captured = capsys.readouterr()
        assert "docroute run " not in captured.out  # stopped before the run began
        return code, captured.err

    code, err = run("ftp://bucket/prefix")
    assert code == 2 and "output.root" in err and "s3://" in err
    code, err = run(f"s3://no-such-bucket-{secrets.token_hex(3)}/x?{s3_server}")
    assert code == 1 and "no-such-bucket" in err and "does not exist" in err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    code, err = run(s3.uri)
    assert code == 1 and f"s3://{s3.bucket}/nightly" in err and "AWS_ACCESS_KEY_ID" in err
    with pytest.raises(StoreError, match="no S3 credentials"):
        Store(s3.uri)


def test_a_root_written_before_migrations_is_migrated_on_s3(s3: S3) -> None:
    """An older root (no ``_catalog.json``, runs without ``family_id``) is brought up to date."""
    old = to_arrow("runs", "r9", [_record("r9", updated_at=1.0)]).drop_columns(["family_id"])
    sink = pa.BufferOutputStream()
    pq.write_table(old, sink)
    with s3.fs.open_output_stream(
        f"{s3.bucket}/nightly/runs/r9/part-00000001-0ld0ld00.parquet"
    ) as out:
        out.write(sink.getvalue())
    store = Store(s3.uri)
    assert store.migrate() == [
        "0001_baseline",
        "0002_part_schemas",
        "0003_runs_family",
        "0004_batch_columns",
        "0005_answers_index",
    ]
    assert f"{s3.bucket}/nightly/_catalog.json" in s3.objects()
    assert f"{s3.bucket}/nightly/runs/_schema.parquet" in s3.objects()
    assert _one(store, "SELECT family_id FROM runs WHERE run_id = 'r9'") == "r9"
    assert Store(s3.uri).migrate() == []


# -- two machines over one bucket: leases -----------------------------------------------------


def test_a_live_run_on_machine_a_is_neither_marked_interrupted_nor_resumed_on_machine_b(
    tmp_path: Path,
    sim_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two machines: two local state folders over one ``file://`` root (the remote code path)."""
    import json
    import time

    from tests.test_concurrent_runs import Holder, config_at, env_with

    folder = tmp_path / "out"
    uri = f"file://{folder}"
    config = config_at(tmp_path / "cfg", uri, run_usd=1.0)
    a = Holder(config, "r-a", env_with(DOCROUTE_STATE_DIR=str(tmp_path / "machine-a")))
    try:
        monkeypatch.setenv("DOCROUTE_STATE_DIR", str(tmp_path / "machine-b"))
        sql = ["sql", "SELECT status FROM runs WHERE run_id = 'r-a'", "--root", uri]
        assert main(["recover", "--root", uri]) == 0  # on B: nothing of A's to recover
        assert "marked interrupted" not in capsys.readouterr().out  # A's lease is fresh
        assert main([*sql, "--format", "csv"]) == 0
        assert capsys.readouterr().out.split() == ["status", "running"]
        assert main(["run", "--config", str(config), "--resume", "r-a"]) == 2
        err = capsys.readouterr().err
        assert "another machine" in err and f"pid {a.proc.pid}" in err and "_leases" in err
        assert main(["run", "--config", str(config)]) == 2  # the same config, any run id
        assert "r-a" in capsys.readouterr().err

        a.kill()  # machine A dies; its lease is no longer renewed, and a minute later:
        lease = folder / "_leases" / "r-a.json"
        data = json.loads(lease.read_text())
        lease.write_text(json.dumps(data | {"expires_at": time.time() - 1}))
        assert main(["recover", "--root", uri]) == 0
        assert "r-a marked interrupted" in capsys.readouterr().out
        assert main([*sql, "--format", "csv"]) == 0
        assert capsys.readouterr().out.split() == ["status", "interrupted"]
        assert main(["run", "--config", str(config), "--resume", "r-a"]) == 0
    finally:
        if a.proc.poll() is None:
            a.kill()
    record = Store(uri).latest_run("r-a")
    assert record is not None and record.status in ("succeeded", "completed_with_failures")
    assert not list((folder / "_leases").glob("*.json"))  # released at the end


def test_a_lease_is_renewed_by_its_heartbeat_and_refused_to_another_holder(
    tmp_path: Path,
) -> None:
    import time

    from pipeline.store.lease import Lease, LeaseHeldError, read_lease
    from pipeline.store.remote import RemoteRoot

    root = RemoteRoot.open(f"file://{tmp_path / 'bucket'}")
    held = Lease.acquire(root, "r1", state=tmp_path / "a", ttl_s=1.0, heartbeat_s=0.05)
    first = held.info.expires_at
    deadline = time.monotonic() + 10
    while read_lease(root, "r1").expires_at <= first:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
        time.sleep(0.02)
    with pytest.raises(LeaseHeldError, match="another machine"):
        Lease.acquire(root, "r1", state=tmp_path / "b")
    # The same machine (host and state folder) with nobody holding the run lock: the
    # holder died, its lease is taken over at once.
    held._stop.set()
    held._thread.join(timeout=10)
    again = Lease.acquire(root, "r1", state=tmp_path / "a", ttl_s=1.0, heartbeat_s=0.05)
    assert read_lease(root, "r1").token == again.info.token  # type: ignore[union-attr]
    held.release()  # no longer its lease: left alone
    assert read_lease(root, "r1") is not None
    again.release()
    assert read_lease(root, "r1") is None
