"""Where a client finds its token (DESIGN §7): ``--token-file``, else ``$IRIS_TOKEN``, else the
token ``iris login`` stored for that controller address in the user's config directory.

Logins are kept per controller address in ``<config>/credentials.json`` (mode 0600), so a local
cluster never overwrites the login to a real one. ``<config>`` is ``$IRIS_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/iris``, else ``~/.config/iris``. A token is never put in a URL or a log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from iris.cluster.errors import InvalidArgument

TOKEN_ENV = "IRIS_TOKEN"
CONFIG_DIR_ENV = "IRIS_CONFIG_DIR"
CREDENTIALS_FILE = "credentials.json"
MAX_TOKEN_CHARS = 4096


def config_dir() -> Path:
    explicit = os.environ.get(CONFIG_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".config") / "iris"


def read_token_file(path: Path | str) -> str:
    """The token in a file (surrounding whitespace ignored). Raises InvalidArgument naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise InvalidArgument(f"--token-file: cannot read {path}: {e.strerror or e}") from None
    if not text or len(text) > MAX_TOKEN_CHARS or any(c.isspace() for c in text):
        raise InvalidArgument(f"--token-file: {path} does not hold a token")
    return text


def _load() -> dict[str, str]:
    try:
        data = json.loads((config_dir() / CREDENTIALS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def stored_token(address: str) -> str | None:
    return _load().get(address)


def store_login(address: str, token: str) -> Path:
    """Remember ``token`` for ``address`` (atomically, mode 0600). Returns the file."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    logins = _load()
    logins[address] = token
    path = directory / CREDENTIALS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(logins, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def forget_login(address: str) -> bool:
    logins = _load()
    if address not in logins:
        return False
    del logins[address]
    path = config_dir() / CREDENTIALS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=path.parent)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(logins, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return True


def find_token(address: str, token_file: Path | str | None = None) -> str | None:
    """The token to present to the controller at ``address``, or None when there is none."""
    if token_file:
        return read_token_file(token_file)
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    return stored_token(address)
