"""Records (dicts) to Arrow tables without losing keys, with type clashes named by column."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


class SchemaConflictError(ValueError):
    """Two records (or two batches) disagree on a column's type."""


def records_to_table(rows: list[dict[str, Any]], where: str) -> pa.Table:
    # Fast path (pyarrow's C++ conversion) when every row has the first row's keys: the usual case.
    first = rows[0].keys() if rows else {}.keys()
    if all(row.keys() == first for row in rows):
        try:
            return pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # fall through to the per-column path, which names the clashing column
    # Column by column, so a type clash names its column; keys are the union over rows, since pyarrow's from_pylist
    # would silently drop keys that the first row lacks.
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise SchemaConflictError(f"{where}: column {name!r} mixes types: {err}") from err
    return pa.table(columns)
