"""Child-process entry point for callable tasks.

``python -m iris.cluster.worker.callable_runner PICKLE_FILE [ERROR_FILE]`` loads
``(fn, args, kwargs)`` written with cloudpickle, calls it, and exits 0 when it returns. When it
raises, the formatted traceback goes to stderr (the task's log) and to ERROR_FILE, where the
worker reads it as the task's error, and the process exits 1.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m iris.cluster.worker.callable_runner PICKLE_FILE [ERROR_FILE]\n")
        return 2
    error_file = Path(argv[2]) if len(argv) > 2 else None
    try:
        import cloudpickle

        with open(argv[1], "rb") as f:
            fn, args, kwargs = cloudpickle.load(f)
        fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException:
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        if error_file is not None:
            try:
                error_file.write_text(text)
            except OSError:
                pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
