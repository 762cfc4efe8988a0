"""Rows of a bulk import (POST /edits:import): JSON Lines or CSV into checked edits, by line number.

JSON Lines: one object per line with the fields of POST /edit (`paraphrases` is accepted for
`rephrase_prompts`). CSV: a header row naming the columns `prompt`, `target_new`, and optionally
`rephrase_prompts` (or `paraphrases`; several separated by `|`), `subject`, `aliases` (several
separated by `|`), `id`, `metadata` (a JSON object); any other column becomes a metadata field (`ticket`, `reason`, ...). Blank lines
are skipped. A row that cannot be used is reported with its line number (1 = the first line of
the file, the CSV header included); the others are imported.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from memoir_core.errors import InvalidRequestError

from .errors import _describe
from .protocol import EditIn

CSV_FIELDS = {"prompt", "target_new", "rephrase_prompts", "paraphrases", "subject", "aliases", "id", "metadata"}


@dataclass
class Row:
    line: int
    edit: EditIn | None = None
    error: str | None = None


def detect(data: str, fmt: str | None, content_type: str | None) -> str:
    if fmt:
        if fmt not in ("jsonl", "csv"):
            raise InvalidRequestError(f"format must be jsonl or csv, not {fmt!r}")
        return fmt
    ctype = (content_type or "").lower()
    if "csv" in ctype:
        return "csv"
    if "json" in ctype:
        return "jsonl"
    return "jsonl" if data.lstrip().startswith("{") else "csv"


def parse(raw: bytes, fmt: str | None = None, content_type: str | None = None, max_rows: int = 10_000) -> list[Row]:
    try:
        data = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidRequestError(f"the file is not UTF-8 (byte {error.start})") from None
    if not data.strip():
        raise InvalidRequestError("the file holds no rows")
    rows = (_jsonl if detect(data, fmt, content_type) == "jsonl" else _csv)(data)
    if not rows:
        raise InvalidRequestError("the file holds no rows")
    if len(rows) > max_rows:
        raise InvalidRequestError(f"the file holds {len(rows)} rows; the limit is {max_rows} per import")
    return rows


def _check(line: int, obj: Any) -> Row:
    if not isinstance(obj, dict):
        return Row(line, error="a row must be a JSON object")
    obj = dict(obj)
    if "paraphrases" in obj:
        if "rephrase_prompts" in obj:
            return Row(line, error="give paraphrases or rephrase_prompts, not both")
        obj["rephrase_prompts"] = obj.pop("paraphrases")
    if obj.get("dry_run"):
        return Row(line, error="dry_run is not allowed in an import")
    obj.pop("dry_run", None)
    try:
        return Row(line, edit=EditIn.model_validate(obj))
    except ValidationError as error:
        return Row(line, error=_describe(list(error.errors()))[0])


def _too_deep(line: int) -> InvalidRequestError:
    # The whole file is refused (400), as the same body is on every other route.
    return InvalidRequestError(f"line {line}: the JSON is nested too deeply to read")


def _jsonl(data: str) -> list[Row]:
    rows = []
    for n, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            rows.append(Row(n, error=f"not valid JSON: {error.msg} (column {error.colno})"))
            continue
        except RecursionError:
            raise _too_deep(n) from None
        rows.append(_check(n, obj))
    return rows


def _csv(data: str) -> list[Row]:
    reader = csv.reader(io.StringIO(data, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return []
    except csv.Error as error:
        raise InvalidRequestError(f"line 1: the CSV header cannot be read: {error}") from None
    missing = [c for c in ("prompt", "target_new") if c not in header]
    if missing:
        raise InvalidRequestError(f"line 1: the CSV header must name the columns prompt and target_new "
                                  f"(missing: {', '.join(missing)})")
    rows = []
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows.append(Row(start, error=f"the CSV row cannot be read: {error}"))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            rows.append(Row(line, error=f"{len(values)} values for {len(header)} columns"))
            continue
        rows.append(_csv_row(line, dict(zip(header, values))))
    return rows


def _csv_row(line: int, cells: dict[str, str]) -> Row:
    obj: dict[str, Any] = {"prompt": cells["prompt"], "target_new": cells["target_new"]}
    for name in ("rephrase_prompts", "paraphrases", "aliases"):
        if cells.get(name, "").strip():
            obj[name] = [p.strip() for p in cells[name].split("|") if p.strip()]
    for name in ("subject", "id"):
        if cells.get(name, "").strip():
            obj[name] = cells[name].strip()
    metadata: dict[str, Any] = {}
    if cells.get("metadata", "").strip():
        try:
            metadata = json.loads(cells["metadata"])
        except json.JSONDecodeError as error:
            return Row(line, error=f"metadata: not valid JSON: {error.msg}")
        except RecursionError:
            raise _too_deep(line) from None
        if not isinstance(metadata, dict):
            return Row(line, error="metadata: must be a JSON object")
    for name, value in cells.items():
        if name not in CSV_FIELDS and name and value.strip():
            metadata[name] = value.strip()
    if metadata:
        obj["metadata"] = metadata
    return _check(line, obj)
