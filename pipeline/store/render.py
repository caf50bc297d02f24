"""A query result as text: an aligned table, CSV or JSON.

    >>> from pipeline.store.catalog import QueryResult
    >>> print(render(QueryResult(["provider", "usd"], [("openai", 1.5), ("mistral", 12.25)]),
    ...              "table"))
    provider |   usd
    ---------+------
    openai   |   1.5
    mistral  | 12.25
    (2 rows)

Table cells are one line each (newlines shown as ``⏎``) and at most ``max_width``
characters, shortened with ``…``; the row count line says how many values were cut. CSV
and JSON carry full values: timestamps and dates as ISO 8601, decimals as numbers, bytes
as base64; in JSON, NaN and infinities are null.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from .catalog import QueryResult

Format = Literal["table", "csv", "json"]
FORMATS: tuple[Format, ...] = ("table", "csv", "json")


def render(result: QueryResult, fmt: Format, *, max_width: int = 40) -> str:
    """``result`` in the format ``fmt``; an unknown format is a ``ValueError``."""
    if fmt == "table":
        return render_table(result, max_width=max_width)
    if fmt == "csv":
        return render_csv(result)
    if fmt == "json":
        return render_json(result)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def render_table(result: QueryResult, *, max_width: int = 40) -> str:
    """Columns padded to a common width, numbers right-aligned, a rule under the header."""
    header = [_shorten(c, max_width) for c in result.columns]
    texts = [[_cell_text(v) for v in row] for row in result.rows]
    cut = sum(len(t) > max_width for row in texts for t in row)
    cells = [[_shorten(t, max_width) for t in row] for row in texts]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [_is_numeric_column(result.rows, i) for i in range(len(header))]
    lines = [_line(header, widths, numeric), "-+-".join("-" * w for w in widths)]
    lines += [_line(row, widths, numeric) for row in cells]
    n = len(result.rows)
    note = (
        f"; {cut} value{'' if cut == 1 else 's'} cut at {max_width} characters (…): "
        "--format csv or json shows them whole"
        if cut
        else ""
    )
    lines.append(f"({n} row{'' if n == 1 else 's'}{note})")
    return "\n".join(line.rstrip() for line in lines)


def render_csv(result: QueryResult) -> str:
    """RFC 4180 quoting (csv module); NULL is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _scalar_text(v) for v in row])
    return out.getvalue()


def render_json(result: QueryResult) -> str:
    """A JSON array of objects, one per row, keys in column order."""
    objects = [
        {c: _jsonable(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows
    ]
    return json.dumps(objects, ensure_ascii=False, indent=2, allow_nan=False)


def _line(cells: list[str], widths: list[int], numeric: list[bool]) -> str:
    parts = [
        c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
    ]
    return " | ".join(parts)


def _is_numeric_column(rows: list[tuple[Any, ...]], i: int) -> bool:
    values = [row[i] for row in rows if row[i] is not None]
    return bool(values) and all(_is_number(v) for v in values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return (
            f"{value:.12g}"  # 0.0025735, not 0.0025735000000000003 (csv/json keep full precision)
        )
    return _scalar_text(value).replace("\r\n", "⏎").replace("\n", "⏎").replace("\t", " ")


def _scalar_text(value: Any) -> str:
    """One value as text for a table cell or CSV field."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset | Mapping | bytes | bytearray | memoryview):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return str(value)


def _jsonable(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes faithfully."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return _jsonable(float(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)
