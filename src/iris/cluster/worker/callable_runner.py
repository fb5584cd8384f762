"""Child-process entry point for callable tasks.

``python -m iris.cluster.worker.callable_runner PICKLE_FILE [ERROR_FILE [RESULT_FILE [MAX_BYTES]]]``
loads ``(fn, args, kwargs)`` written with cloudpickle and calls it. When it returns, its value is
pickled with cloudpickle into RESULT_FILE (written whole or not at all) and the process exits 0;
a value over MAX_BYTES pickled is an error instead. When it raises, the formatted traceback goes
to stderr (the task's log) and to ERROR_FILE, where the worker reads it as the task's error, and
the process exits 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024


def _fail(text: str, error_file: Path | None) -> int:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()
    if error_file is not None:
        try:
            error_file.write_text(text)
        except OSError:
            pass
    return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m iris.cluster.worker.callable_runner PICKLE_FILE [ERROR_FILE "
                         "[RESULT_FILE [MAX_BYTES]]]\n")
        return 2
    error_file = Path(argv[2]) if len(argv) > 2 else None
    result_file = Path(argv[3]) if len(argv) > 3 else None
    max_bytes = int(argv[4]) if len(argv) > 4 else DEFAULT_MAX_RESULT_BYTES
    try:
        import cloudpickle

        with open(argv[1], "rb") as f:
            fn, args, kwargs = cloudpickle.load(f)
        value = fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException:
        return _fail(traceback.format_exc(), error_file)
    if result_file is None:
        return 0
    try:
        data = cloudpickle.dumps(value)
    except Exception as e:
        return _fail(f"ResultError: the return value cannot be pickled: {type(e).__name__}: {e}", error_file)
    if len(data) > max_bytes:
        return _fail(f"ResultError: the return value is {len(data):,} bytes pickled, over the cap of {max_bytes:,} "
                     "(--max-result-size); write large outputs to storage and return a reference", error_file)
    tmp = result_file.with_name(result_file.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
