"""One attempt's log: timestamped lines of stdout and stderr, capped, read by offset.

The worker writes it as the task prints (``AttemptLog.append_line``) and ships it to the controller,
which keeps its own copy (``AttemptLog.append_at``) so logs outlive the worker. Both read it the
same way: a page from a byte offset costs O(page), a tail reads from the end.

Format: one record per line, ``<unix ms> <o|e> <text>\\n`` (o: stdout, e: stderr); text is UTF-8
(undecodable bytes replaced), without its line break, a line longer than ``MAX_LINE_BYTES`` split.

Cap: an attempt keeps at most ``cap`` bytes: the first half (the *head*, file ``log``) and the
newest records up to the other half (the *tail*, in segment files ``log.<offset>`` of an eighth
of the cap each, the oldest removed as new ones fill). Offsets are *logical*: the position in
everything the attempt ever wrote, so a reader at an offset that was dropped gets one line saying
how much was dropped and goes on at the oldest kept record.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOG_CAP_BYTES = 100 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024
"""A longer line is split into pieces of this size."""
PAGE_DEFAULT_LINES = 1000
PAGE_MAX_LINES = 10_000
PAGE_MAX_BYTES = 4 * 1024 * 1024
_READ_BLOCK = 64 * 1024
_SEGMENTS = 4
HEAD_NAME = "log"


@dataclass(frozen=True, slots=True)
class Record:
    timestamp_ms: int
    source: str
    """"stdout" or "stderr" ("iris" for lines Iris adds, such as a note of dropped output)."""
    text: str


@dataclass(slots=True)
class _File:
    start: int
    """Logical offset of its first byte."""
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Record]
    next_offset: int
    end_offset: int
    """Where the log ends now (logical)."""


_SOURCES = {b"o": "stdout", b"e": "stderr", b"i": "iris"}
_CODES = {"stdout": b"o", "stderr": b"e", "iris": b"i"}


def encode(timestamp_ms: int, source: str, text: bytes | str) -> bytes:
    """One record's bytes (text's line breaks are not allowed in it; the caller split lines)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    else:
        text = text.decode("utf-8", "replace").encode("utf-8")
    return b"%d %s %s\n" % (timestamp_ms, _CODES.get(source, b"o"), text.replace(b"\n", b" "))


def decode(raw: bytes) -> Record:
    line = raw.rstrip(b"\n")
    ts, _, rest = line.partition(b" ")
    code, _, text = rest.partition(b" ")
    try:
        timestamp_ms = int(ts)
    except ValueError:
        return Record(0, "stdout", line.decode("utf-8", "replace"))
    return Record(timestamp_ms, _SOURCES.get(code, "stdout"), text.decode("utf-8", "replace").rstrip("\r"))


class AttemptLog:
    """The files of one attempt's log in ``directory``. Thread-safe; one writer (this object)."""

    def __init__(self, directory: Path, cap_bytes: int = DEFAULT_LOG_CAP_BYTES) -> None:
        self.directory = directory
        self.cap = max(cap_bytes, 8 * 1024)
        self.head_cap = self.cap // 2
        self.segment_cap = max(1, self.cap // 2 // _SEGMENTS)
        self._lock = threading.Lock()
        self._layout: list[_File] | None = None
        """[logical start, path, size] per kept file, in order (read from disk once, then kept)."""

    # -- layout ---------------------------------------------------------------------------------

    def _head(self) -> Path:
        return self.directory / HEAD_NAME

    def _files_locked(self) -> list[_File]:
        if self._layout is None:
            layout: list[_File] = []
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                names = []
            if HEAD_NAME in names:
                layout.append(_File(0, self._head(), self._head().stat().st_size))
            tail = sorted(int(n[len(HEAD_NAME) + 1:]) for n in names
                          if n.startswith(HEAD_NAME + ".") and n[len(HEAD_NAME) + 1:].isdigit())
            for start in tail:
                path = self.directory / f"{HEAD_NAME}.{start:020d}"
                layout.append(_File(start, path, path.stat().st_size))
            self._layout = layout
        return self._layout

    def _files(self) -> list[tuple[int, Path, int]]:
        with self._lock:
            return [(f.start, f.path, f.size) for f in self._files_locked()]

    def end_offset(self) -> int:
        with self._lock:
            return self._end_locked()

    def _end_locked(self) -> int:
        files = self._files_locked()
        if not files:
            return 0
        return files[-1].start + files[-1].size

    def exists(self) -> bool:
        with self._lock:
            return bool(self._files_locked())

    # -- writing --------------------------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Append whole records at the logical end."""
        with self._lock:
            self._write_locked(self._end_locked(), data)

    def append_line(self, timestamp_ms: int, source: str, text: bytes) -> None:
        self.append(encode(timestamp_ms, source, text))

    def append_at(self, offset: int, data: bytes) -> int:
        """Write records that start at logical ``offset`` (a shipped chunk): the part already held
        is skipped (a resend), a gap before it (records the sender dropped) is kept as a gap.
        ``data`` starts and ends on record boundaries. Returns the new logical end."""
        with self._lock:
            end = self._end_locked()
            if offset + len(data) <= end:
                return end
            if offset < end:
                data = data[end - offset:]
                offset = end
            self._write_locked(offset, data)
            return self._end_locked()

    def _write_locked(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self._files_locked()
        end = self._end_locked()
        head_open = offset == end and end < self.head_cap and all(f.path == self._head() for f in files)
        if head_open:
            room = self.head_cap - end
            part = data if len(data) <= room else data[: data.rfind(b"\n", 0, room) + 1]
            if part:
                with open(self._head(), "ab") as f:
                    f.write(part)
                if files:
                    files[0].size += len(part)
                else:
                    files.append(_File(0, self._head(), len(part)))
                data = data[len(part):]
                offset += len(part)
            if not data:
                return
        # The tail: segments of segment_cap each, the oldest dropped past _SEGMENTS of them. A
        # chunk larger than the tail (a shipped copy catching up) keeps only its newest records.
        keep = self.segment_cap * _SEGMENTS
        if len(data) > keep:
            cut = data.find(b"\n", len(data) - keep - 1) + 1
            if cut <= 0 or cut >= len(data):  # one record longer than the tail: keep the last whole
                cut = data.rfind(b"\n", 0, len(data) - 1) + 1
            offset += cut
            data = data[cut:]
        full = False
        while data:
            last = files[-1] if files else None
            if full or last is None or last.path == self._head() or last.start + last.size != offset \
                    or last.size >= self.segment_cap:
                last = _File(offset, self.directory / f"{HEAD_NAME}.{offset:020d}", 0)
                files.append(last)
                full = False
            room = self.segment_cap - last.size
            part = data if len(data) <= room else data[: data.rfind(b"\n", 0, room) + 1]
            if not part:  # the next record is longer than the room left: it starts a segment, whole
                if last.size:
                    full = True
                    continue
                part = data[: data.find(b"\n") + 1] or data
            with open(last.path, "ab") as out:
                out.write(part)
            last.size += len(part)
            data = data[len(part):]
            offset += len(part)
        tail = [f for f in files if f.path != self._head()]
        for old in tail[:-_SEGMENTS]:
            files.remove(old)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old.path)

    def remove(self) -> None:
        with self._lock:
            for f in self._files_locked():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.path)
            self._layout = None

    # -- reading --------------------------------------------------------------------------------

    def read_bytes(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """Whole records from ``offset`` (at most ``max_bytes``, at least one record): (the logical
        offset they start at, which is later than ``offset`` when that part was dropped, the bytes)."""
        end = self.end_offset()
        for start, path, size in self._files():
            if offset >= start + size:
                continue
            begin = max(offset, start)
            with open(path, "rb") as f:
                f.seek(begin - start)
                data = f.read(min(max_bytes, start + size - begin))
            if len(data) == max_bytes:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one record longer than max_bytes: read it whole
                    with open(path, "rb") as f:
                        f.seek(begin - start)
                        data = f.readline()
                else:
                    data = data[:cut]
            elif not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
            return begin, data
        return min(offset, end), b""

    def read(self, offset: int = 0, max_lines: int = PAGE_DEFAULT_LINES) -> Page:
        """A page of records from logical ``offset``: O(page). When ``offset`` falls in what the
        cap dropped, the page starts with one "iris" line saying how much was dropped."""
        limit = min(max_lines or PAGE_DEFAULT_LINES, PAGE_MAX_LINES)
        records: list[Record] = []
        position = offset
        read = 0
        while len(records) < limit and read < PAGE_MAX_BYTES:
            # Blocks of 64 KiB: a short page (a tail, a follow) reads little, a long one stops at the cap.
            start, data = self.read_bytes(position, _READ_BLOCK)
            if not data:
                position = start
                break
            if start > position:
                records.append(Record(0, "iris", f"[iris] {start - position:,} bytes of output dropped here "
                                                 f"(the log keeps its first and last {self.head_cap:,} bytes)"))
            position = start
            read += len(data)
            for raw in _lines(data):
                if len(records) >= limit:
                    break
                records.append(decode(raw))
                position += len(raw)
        return Page(records, position, self.end_offset())

    def offset_of_record(self, index: int) -> int:
        """The logical offset of record number ``index`` from the start (the line-numbered protocol
        of older callers: O(index))."""
        offset = 0
        while index > 0:
            page = self.read(offset, min(index, PAGE_MAX_LINES))
            if not page.records:
                break
            index -= len(page.records)
            offset = page.next_offset
        return offset

    def tail_offset(self, lines: int) -> int:
        """The logical offset of the last ``lines`` records (read backwards from the end)."""
        if lines <= 0:
            return self.end_offset()
        files = self._files()
        need = lines
        for start, path, size in reversed(files):
            if size == 0:
                continue
            position = size
            with open(path, "rb") as f:
                while position > 0:
                    block = min(64 * 1024, position)
                    f.seek(position - block)
                    data = f.read(block)
                    # the newline ending the file's last record does not start a record
                    scan_end = len(data) - 1 if position == size else len(data)
                    index = scan_end
                    while True:
                        index = data.rfind(b"\n", 0, index)
                        if index < 0:
                            break
                        need -= 1
                        if need == 0:
                            return start + position - block + index + 1
                    position -= block
            need -= 1  # the file's first record
            if need == 0:
                return start
        return 0


def _lines(data: bytes) -> Iterator[bytes]:
    start = 0
    while True:
        nl = data.find(b"\n", start)
        if nl < 0:
            return
        yield data[start:nl + 1]
        start = nl + 1
