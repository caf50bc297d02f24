"""The stored tables as Arrow schemas, and fast row → Arrow conversion.

Each table is a list of Parquet parts; this module says what columns a part has and
turns rows (dataclass instances or mappings) into a ``pyarrow.Table`` column by column::

    >>> from pipeline.store.tables import to_arrow
    >>> t = to_arrow("documents", "run-1", [{"doc_id": "d1", "path": "a.txt",
    ...     "size_bytes": 3, "status": "ok", "chunks": 1}])
    >>> t.column("run_id").to_pylist(), t.column("reason").to_pylist()
    (['run-1'], [None])

Times are float epoch seconds in the dataclasses and ``timestamp("us", tz="UTC")`` on
disk. A column declared non-nullable refuses ``None`` with an error that names it, so a
part never holds a result without a ``chunk_id``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", tz="UTC")
_STR, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()


def _schema(*fields: tuple[str, pa.DataType] | tuple[str, pa.DataType, bool]) -> pa.Schema:
    """``("name", type)`` is required; ``("name", type, True)`` is nullable."""
    return pa.schema([pa.field(f[0], f[1], nullable=len(f) > 2 and bool(f[2])) for f in fields])


SCHEMAS: dict[str, pa.Schema] = {
    "runs": _schema(
        ("run_id", _STR),
        ("parent_run_id", _STR, True),
        ("flow", _STR),
        ("status", _STR),
        ("started_at", TIMESTAMP),
        ("finished_at", TIMESTAMP, True),
        ("updated_at", TIMESTAMP),
        ("config_hash", _STR),
        ("corpus", _STR),
        ("schema_name", _STR),
        ("budget_usd", _FLOAT),
        ("spend_usd", _FLOAT),
        ("documents", _INT),
        ("document_errors", _INT),
        ("chunks", _INT),
        ("succeeded", _INT),
        ("failed", _INT),
        ("skipped", _INT),
        ("message", _STR, True),
        ("token_counter", _STR, True),
        ("family_id", _STR, True),
        ("schema_version", _STR, True),
        ("prompt_version", _STR, True),
        ("model_policy", _STR, True),
        ("selection", _STR, True),
        ("reuse", _STR, True),
    ),
    "documents": _schema(
        ("run_id", _STR),
        ("doc_id", _STR),
        ("path", _STR),
        ("size_bytes", _INT),
        ("status", _STR),
        ("reason", _STR, True),
        ("message", _STR, True),
        ("encoding", _STR, True),
        ("note", _STR, True),
        ("chunks", _INT),
    ),
    "chunks": _schema(
        ("run_id", _STR),
        ("chunk_id", _STR),
        ("doc_id", _STR),
        ("path", _STR),
        ("index", _INT),
        ("char_start", _INT),
        ("char_end", _INT),
        ("token_estimate", _INT),
        ("text", _STR),
        ("regions", pa.list_(_STR)),
        ("residency_rule", _STR),
        ("pages", pa.list_(pa.int32())),
    ),
    "results": _schema(
        ("run_id", _STR),
        ("chunk_id", _STR),
        ("doc_id", _STR),
        ("path", _STR),
        ("status", _STR),
        ("reason", _STR, True),
        ("output", _STR, True),
        ("provider", _STR, True),
        ("model", _STR, True),
        ("region", _STR, True),
        ("attempts", _INT),
        ("cost_usd", _FLOAT),
        ("finished_at", TIMESTAMP),
        ("schema_name", _STR),
        ("error", _STR, True),
        ("schema_version", _STR, True),
        ("idem_key", _STR, True),
        ("reused_from", _STR, True),
        ("excluded", _STR, True),
    ),
    "ledger": _schema(
        ("run_id", _STR),
        ("chunk_id", _STR),
        ("attempt", _INT),
        ("provider", _STR, True),
        ("model", _STR, True),
        ("region", _STR, True),
        ("mode", _STR),
        ("started_at", TIMESTAMP),
        ("latency_ms", _FLOAT),
        ("input_tokens", _INT),
        ("output_tokens", _INT),
        ("cached_input_tokens", _INT),
        ("cache_write_tokens", _INT),
        ("cost_usd", _FLOAT),
        ("reserved_usd", _FLOAT),
        ("outcome", _STR),
        ("http_status", _INT, True),
        ("error", _STR, True),
        ("request_id", _STR, True),
        ("model_reported", _STR, True),
        ("attempt_id", _STR, True),
        ("batch_id", _STR, True),
    ),
    # The prices each run counted with (one row per endpoint), so `docroute audit` can
    # recompute every ledger cost from the run's own price table.
    "prices": _schema(
        ("run_id", _STR),
        ("provider", _STR),
        ("model", _STR),
        ("region", _STR),
        ("input_per_mtok", _FLOAT),
        ("output_per_mtok", _FLOAT),
        ("cached_input_per_mtok", _FLOAT),
        ("cache_write_per_mtok", _FLOAT, True),
        ("context_window", _INT),
        ("max_output_tokens", _INT),
        ("priced_at", _STR),
        ("batch_input_per_mtok", _FLOAT, True),
        ("batch_output_per_mtok", _FLOAT, True),
    ),
    # The reuse index: one row per answer a run paid for (succeeded, not reused), by
    # idempotency key, with what it cost and where it was made, written with the results
    # it indexes. A run reads
    # this small table to know which keys the root can answer, then only the results of
    # the runs that hit.
    "answers": _schema(
        ("run_id", _STR),
        ("idem_key", _STR),
        ("finished_at", TIMESTAMP),
        ("cost_usd", _FLOAT),
        ("region", _STR, True),
    ),
}

TABLES: tuple[str, ...] = tuple(SCHEMAS)


def answer_rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """The ``answers`` rows of ``results``: those that are a paid-for answer."""
    return [
        {
            "idem_key": r.idem_key,
            "finished_at": r.finished_at,
            "cost_usd": r.cost_usd,
            "region": r.region,
        }
        for r in results
        if r.status == "succeeded" and r.idem_key and r.output is not None and not r.reused_from
    ]


def schema_for(table: str) -> pa.Schema:
    """The schema of ``table``; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return SCHEMAS[table]
    except KeyError:
        known = ", ".join(TABLES)
        raise ValueError(f"unknown table {table!r}; the tables are: {known}") from None


def to_arrow(table: str, run_id: str, rows: Sequence[Any]) -> pa.Table:
    """``rows`` as an Arrow table of ``table``'s schema, every row stamped with ``run_id``.

    Rows are dataclass instances or mappings. A row's own ``run_id``, when it has one,
    must equal ``run_id`` (a part folder holds one run); a field or key the table has no
    column for is an error rather than silently dropped.
    """
    schema = schema_for(table)
    columns = _columns(table, schema, rows)
    own = columns.get("run_id") or [None] * len(rows)
    if any(value is not None and value != run_id for value in own):
        raise ValueError(f"{table}: every row of this part must belong to run {run_id!r}")
    columns["run_id"] = [run_id] * len(rows)
    arrays = [_array(table, field, columns.get(field.name, [None] * len(rows))) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _columns(table: str, schema: pa.Schema, rows: Sequence[Any]) -> dict[str, list[Any]]:
    """Column name → values, read straight off the rows (no per-row dict for dataclasses)."""
    kind = type(rows[0]) if rows else None
    if kind is not None and dataclasses.is_dataclass(kind) and all(type(r) is kind for r in rows):
        names = _dataclass_fields(table, kind)
        return {name: [getattr(r, name) for r in rows] for name in names}
    dicts = [_as_mapping(row) for row in rows]
    known = set(schema.names)
    for row in dicts:
        extra = set(row) - known
        if extra:
            raise ValueError(f"{table} has no column(s) {sorted(extra)}; columns: {schema.names}")
    present = {key for row in dicts for key in row}
    return {name: [row.get(name) for row in dicts] for name in schema.names if name in present}


@cache
def _dataclass_fields(table: str, kind: type) -> tuple[str, ...]:
    names = tuple(f.name for f in dataclasses.fields(kind))
    extra = set(names) - set(SCHEMAS[table].names)
    if extra:
        raise ValueError(f"{table} has no column(s) {sorted(extra)} of {kind.__name__}")
    return names


def _as_mapping(row: Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    raise TypeError(f"a row must be a dataclass instance or a mapping, not {type(row).__name__}")


def _array(table: str, field: pa.Field, values: list[Any]) -> pa.Array:
    try:
        is_time = field.type == TIMESTAMP
        array = timestamps(values) if is_time else pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValueError(f"{table}.{field.name}: {exc}") from exc
    if not field.nullable and array.null_count:
        raise ValueError(f"{table}.{field.name} is required, but {array.null_count} row(s) lack it")
    return array


def timestamps(values: list[Any]) -> pa.Array:
    """Float epoch seconds (or ``datetime``s, or ``None``) → ``timestamp("us", UTC)``.

    >>> timestamps([0.5, None]).to_pylist()[0].isoformat()
    '1970-01-01T00:00:00.500000+00:00'
    """
    if any(isinstance(v, datetime) for v in values):
        return pa.array(values, type=TIMESTAMP)
    seconds = pa.array(values, type=pa.float64())
    micros = pc.round(pc.multiply(seconds, 1_000_000)).cast(pa.int64())
    return micros.cast(TIMESTAMP)
