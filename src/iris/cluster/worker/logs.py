"""Reading one attempt's log file a page at a time.

A page that starts at a byte offset (the ``next_offset`` of the previous page) costs O(page): the
file is read from there, never from its start. A page that gives only a line number counts lines
from the start (the old protocol; O(file)). While the attempt runs, an unterminated last line is
held back until it is complete, so no caller ever sees half a line twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PAGE_DEFAULT_LINES = 1000
PAGE_MAX_LINES = 10_000
_READ_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: list[str]
    next_line: int
    next_offset: int


def read_page(path: Path, *, start_line: int, start_offset: int | None, max_lines: int, finished: bool) -> LogPage:
    """Lines ``[start_line, start_line + max_lines)`` of the file, read from ``start_offset``
    when given (it must be the offset of ``start_line``, as a previous page returned it)."""
    limit = min(max_lines or PAGE_DEFAULT_LINES, PAGE_MAX_LINES)
    lines: list[str] = []
    try:
        f = open(path, "rb")  # closed by the with below
    except FileNotFoundError:
        return LogPage(lines, start_line, start_offset or 0)
    with f:
        if start_offset is None:
            offset = _offset_of_line(f, start_line)
            if offset is None:  # the file has fewer lines
                return LogPage(lines, start_line, f.seek(0, os.SEEK_END))
        else:
            offset = start_offset
        f.seek(offset)
        while len(lines) < limit:
            raw = f.readline()
            if not raw:
                break
            if not raw.endswith(b"\n") and not finished:
                break  # still being written
            offset += len(raw)
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    return LogPage(lines, start_line + len(lines), offset)


def _offset_of_line(f: BinaryIO, line: int) -> int | None:
    """Byte offset where line ``line`` (0-based) starts, scanning from the start in blocks."""
    if line == 0:
        return 0
    seen = 0
    base = 0
    while True:
        block = f.read(_READ_BLOCK)
        if not block:
            return None
        start = 0
        while True:
            newline = block.find(b"\n", start)
            if newline < 0:
                break
            seen += 1
            if seen == line:
                return base + newline + 1
            start = newline + 1
        base += len(block)


def tail_text(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file (read from its last 4 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])
