"""An attempt's log file: records with time and stream, pages by offset, tails, the cap and
shipped copies (``iris.cluster.logfile``)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from iris.cluster.logfile import AttemptLog, encode


def texts(log: AttemptLog, offset: int = 0) -> list[str]:
    out: list[str] = []
    while True:
        page = log.read(offset, max_lines=7)
        out.extend(r.text for r in page.records)
        if page.next_offset >= page.end_offset or not page.records:
            return out
        offset = page.next_offset


def test_records_keep_time_and_stream_and_page_by_offset(tmp_path: Path) -> None:
    log = AttemptLog(tmp_path)
    for i in range(20):
        log.append_line(1000 + i, "stderr" if i % 2 else "stdout", f"line {i}".encode())
    page = log.read(0, max_lines=5)
    assert [(r.timestamp_ms, r.source, r.text) for r in page.records[:2]] == [(1000, "stdout", "line 0"),
                                                                               (1001, "stderr", "line 1")]
    second = log.read(page.next_offset, max_lines=5)
    assert [r.text for r in second.records] == [f"line {i}" for i in range(5, 10)]
    assert texts(log) == [f"line {i}" for i in range(20)]


def test_tail_offset_gives_the_last_n_records(tmp_path: Path) -> None:
    log = AttemptLog(tmp_path)
    for i in range(50):
        log.append_line(i, "stdout", f"l{i}".encode())
    assert [r.text for r in log.read(log.tail_offset(3)).records] == ["l47", "l48", "l49"]
    assert len(log.read(log.tail_offset(500), max_lines=100).records) == 50
    assert log.read(log.tail_offset(0)).records == []


def test_over_the_cap_keeps_head_and_tail_and_says_what_was_dropped(tmp_path: Path) -> None:
    log = AttemptLog(tmp_path, cap_bytes=8 * 1024)
    for i in range(2000):
        log.append_line(i, "stdout", f"record number {i:05d}".encode())
    kept = texts(log)
    assert kept[0] == "record number 00000" and kept[-1] == "record number 01999"
    dropped = [t for t in kept if t.startswith("[iris]")]
    assert len(dropped) == 1 and "bytes of output dropped" in dropped[0]
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= 8 * 1024 + 64
    assert [r.text for r in log.read(log.tail_offset(2)).records] == ["record number 01998", "record number 01999"]


def test_a_shipped_copy_skips_resends_and_keeps_gaps(tmp_path: Path) -> None:
    source = AttemptLog(tmp_path / "worker", cap_bytes=8 * 1024)
    copy = AttemptLog(tmp_path / "controller", cap_bytes=8 * 1024)
    shipped = 0
    for i in range(3000):
        source.append_line(i, "stdout", f"r{i:05d}".encode())
        if i % 97 == 0:
            start, data = source.read_bytes(shipped, 1024)
            copy.append_at(start, data)
            copy.append_at(start, data)  # a resend changes nothing
            shipped = start + len(data)
    while shipped < source.end_offset():
        start, data = source.read_bytes(shipped, 4096)
        copy.append_at(start, data)
        shipped = start + len(data)
    assert copy.end_offset() == source.end_offset()
    tail = [t for t in texts(copy) if not t.startswith("[iris]")]
    assert tail[-1] == "r02999" and tail[0] == "r00000"


def test_a_shipped_chunk_larger_than_the_cap_keeps_the_cap(tmp_path: Path) -> None:
    """The controller's copy receives what a busy worker shipped at once: its records beyond the
    cap are dropped as the worker's own file drops them, not kept in one oversized segment."""
    copy = AttemptLog(tmp_path, cap_bytes=8 * 1024)
    data = b"".join(encode(i, "stdout", f"record number {i:05d}") for i in range(5000))
    copy.append_at(0, data)
    assert copy.end_offset() == len(data)
    kept = texts(copy)
    assert kept[0] == "record number 00000" and kept[-1] == "record number 04999"
    assert sum(1 for t in kept if "bytes of output dropped" in t) == 1
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 8 * 1024 + 64
    more = b"".join(encode(i, "stdout", f"record number {i:05d}") for i in range(5000, 5100))
    copy.append_at(len(data), more)  # and goes on from there
    assert texts(copy)[-1] == "record number 05099"
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 8 * 1024 + 64


def test_a_long_line_and_odd_bytes_stay_one_readable_record(tmp_path: Path) -> None:
    log = AttemptLog(tmp_path)
    log.append(encode(5, "stdout", b"\xff\xfe half \x00 nul"))
    [record] = log.read(0).records
    assert record.timestamp_ms == 5 and "half" in record.text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\n\r"), max_size=300), max_size=200),
       st.integers(1, 40))
def test_pages_of_any_size_read_back_every_record_in_order(lines: list[str], page: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        log = AttemptLog(Path(d))
        for i, line in enumerate(lines):
            log.append_line(i, "stdout", line.encode("utf-8", "replace"))  # what a pipe can carry
        out: list[str] = []
        offset = 0
        while True:
            got = log.read(offset, max_lines=page)
            out.extend(r.text for r in got.records)
            if not got.records:
                break
            offset = got.next_offset
        assert out == [line.encode("utf-8", "replace").decode("utf-8", "replace").rstrip("\r") for line in lines]
