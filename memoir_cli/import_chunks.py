"""Splitting an import file into pieces under the server's body limit, keeping line numbers.

A JSON Lines file is cut between lines; a CSV file between records (a quoted value may span
lines), each piece starting with the header again. `Chunk.line(n)` maps a line number the server
reports for a piece back to the line of the whole file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass


@dataclass
class Chunk:
    data: bytes
    first: int  # line of the whole file (1-based) that the piece's first row starts on
    header: bool  # the piece starts with a CSV header line
    rows: int  # rows in the piece (non-blank)

    def line(self, reported: int) -> int:
        return self.first + reported - (2 if self.header else 1)


def split(data: bytes, fmt: str, max_bytes: int) -> list[Chunk]:
    text = data.decode("utf-8-sig", errors="replace")
    lines = text.splitlines(keepends=True)
    if fmt == "csv":
        header, records = _csv_records(text, lines)
    else:
        header, records = "", [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not records:
        return [Chunk(data, 1, False, 0)]
    chunks: list[Chunk] = []
    budget = max(1, max_bytes - len(header.encode()))
    start, size, piece = records[0][0], 0, []
    for number, record in records:
        n = len(record.encode())
        if piece and size + n > budget:
            chunks.append(Chunk((header + "".join(piece)).encode(), start, bool(header), len(piece)))
            start, size, piece = number, 0, []
        piece.append(record if record.endswith("\n") else record + "\n")
        size += n
    chunks.append(Chunk((header + "".join(piece)).encode(), start, bool(header), len(piece)))
    return chunks


def _csv_records(text: str, lines: list[str]) -> tuple[str, list[tuple[int, str]]]:
    """The header line and each record as (first line number, its text, quoted newlines included)."""
    if not lines:
        return "", []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        next(reader)
    except (StopIteration, csv.Error):
        return lines[0], []
    header_end = reader.line_num
    records, start = [], header_end
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error:
            values = ["?"]  # unreadable: sent as it is, the server reports it
        end = reader.line_num
        if any(v.strip() for v in values):
            records.append((start + 1, "".join(lines[start:end])))
        start = end
    return "".join(lines[:header_end]), records
