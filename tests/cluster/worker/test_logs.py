"""Log pages by byte offset: a page read from an offset seeks there (O(page)), never rereads the
file from its start, and agrees with counting lines."""

from __future__ import annotations

from pathlib import Path

from iris.cluster.worker.logs import read_page


def test_log_pages_by_offset_cover_the_file_once(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("".join(f"line {i}\n" for i in range(2500)))
    lines: list[str] = []
    line, offset = 0, 0
    while True:
        page = read_page(log, start_line=line, start_offset=offset, max_lines=1000, finished=True)
        if not page.lines:
            break
        lines += page.lines
        line, offset = page.next_line, page.next_offset
    assert lines == [f"line {i}" for i in range(2500)]
    assert offset == log.stat().st_size
    by_line = read_page(log, start_line=2000, start_offset=None, max_lines=3, finished=True)
    assert by_line.lines == ["line 2000", "line 2001", "line 2002"]
    offset_2000 = sum(len(f"line {i}\n") for i in range(2000))
    by_offset = read_page(log, start_line=2000, start_offset=offset_2000, max_lines=3, finished=True)
    assert by_offset == by_line


def test_log_page_from_an_offset_reads_from_there_not_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"first\nsecond\nthird\n")
    page = read_page(log, start_line=1, start_offset=len(b"first\nsecond\n"), max_lines=10, finished=True)
    assert page.lines == ["third"] and page.next_line == 2 and page.next_offset == len(b"first\nsecond\nthird\n")


def test_log_unterminated_last_line_is_held_back_while_running(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"done\npart")
    running = read_page(log, start_line=0, start_offset=0, max_lines=10, finished=False)
    assert running.lines == ["done"] and running.next_offset == 5
    with log.open("ab") as f:
        f.write(b"ial\n")
    rest = read_page(log, start_line=running.next_line, start_offset=running.next_offset, max_lines=10,
                     finished=False)
    assert rest.lines == ["partial"]
    ended = read_page(tmp_path / "missing.log", start_line=0, start_offset=None, max_lines=10, finished=True)
    assert ended.lines == [] and ended.next_offset == 0
    # Invalid UTF-8 is replaced, never an error.
    log.write_bytes(b"\xff\xfe bad\n")
    assert read_page(log, start_line=0, start_offset=0, max_lines=1, finished=True).lines == ["\ufffd\ufffd bad"]
