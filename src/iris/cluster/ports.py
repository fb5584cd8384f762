"""Ports handed to tasks: each worker declares a range outside its host's ephemeral range
(``iris worker serve --port-range A-B``), and the controller allocates every named port and a
gang's rendezvous port from the range of the worker a task goes to, at placement (``PortBook``),
so no two live attempts on one host share a port and the values are known at dispatch.

Just before it starts an attempt the worker checks that its ports are free; one that something
outside Iris holds sends the attempt back to be placed again with other ports, charged to no
budget, and the controller avoids that port on that host for ``OUTSIDE_HOLD_MS``.

Pure, but for ``ephemeral_range`` (reads ``/proc``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from iris.cluster.errors import InvalidArgument

DEFAULT_COORDINATOR_PORT = 29500
"""torchrun's default rendezvous port: used only where the location declares no port range (a pod,
which has a network namespace of its own)."""
DEFAULT_RANGE_SIZE = 8192
"""How many ports the default range holds (fewer where the host leaves less room)."""
MIN_RANGE_SIZE = 64
"""The least room outside the ephemeral range a default is made from."""
OUTSIDE_HOLD_MS = 10 * 60_000
"""How long a port that a worker found held by something outside Iris is not handed out on its host."""
LINUX_EPHEMERAL = (32768, 60999)
"""Linux's default ``net.ipv4.ip_local_port_range``."""


def check_port_range(first: int, last: int, field_name: str = "port_range") -> tuple[int, int]:
    """A port range (inclusive): 1 <= first <= last <= 65535."""
    if not (1 <= first <= last <= 65535):
        raise InvalidArgument(f"{field_name}: expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, "
                              f"got {first}-{last}")
    return first, last


def parse_port_range(text: str, field_name: str = "port_range") -> tuple[int, int]:
    """``"A-B"`` as (A, B), checked."""
    first, sep, last = text.strip().partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise InvalidArgument(f"{field_name}: expected FIRST-LAST (e.g. 20000-28191), got {text[:40]!r}")
    return check_port_range(int(first), int(last), field_name)


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The host's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        low, high = (int(v) for v in path.read_text().split()[:2])
    except (OSError, ValueError):
        return LINUX_EPHEMERAL
    return low, high


def default_port_range(ephemeral: tuple[int, int], size: int = DEFAULT_RANGE_SIZE) -> tuple[int, int]:
    """A range of up to ``size`` ports outside ``ephemeral``: just below it when there is room
    (above 1024, clear of the well-known ports), else just above it. Raises ValueError when the
    host leaves less than ``MIN_RANGE_SIZE`` ports either side."""
    low, high = ephemeral
    below = low - 1025  # ports 1025 .. low-1
    above = 65535 - high  # ports high+1 .. 65535
    if below >= min(size, MIN_RANGE_SIZE) and below >= above:
        return max(1025, low - size), low - 1
    if above >= MIN_RANGE_SIZE:
        return high + 1, min(65535, high + size)
    raise ValueError(f"the ephemeral port range {low}-{high} leaves no room for task ports: "
                     "pass --port-range FIRST-LAST")


@dataclass(slots=True)
class _Host:
    held: set[int] = field(default_factory=set)
    """Ports live (or stopping) attempts on this host hold."""
    outside: dict[int, int] = field(default_factory=dict)
    """Ports something outside Iris held, and until when they are avoided (ms)."""


class PortBook:
    """The ports handed to attempts, per host (workers sharing a host share its ports)."""

    def __init__(self, outside_hold_ms: int = OUTSIDE_HOLD_MS) -> None:
        self._hosts: dict[str, _Host] = {}
        self._outside_hold_ms = outside_hold_ms

    def take(self, host: str, first: int, last: int, count: int, start_at: int, now_ms: int
             ) -> tuple[list[int], int] | None:
        """``count`` free ports of ``first..last`` on ``host``, looking from ``start_at`` onwards
        (wrapping), and where the next search should start; None (nothing taken) when the range
        has fewer free. Next-fit: a port just given back is not handed out again at once."""
        entry = self._hosts.setdefault(host, _Host())
        size = last - first + 1
        start = start_at if first <= start_at <= last else first
        taken: list[int] = []
        for step in range(size):
            port = first + (start - first + step) % size
            if port in entry.held:
                continue
            until = entry.outside.get(port)
            if until is not None:
                if until > now_ms:
                    continue
                del entry.outside[port]
            taken.append(port)
            if len(taken) == count:
                entry.held.update(taken)
                return taken, first + (port - first + 1) % size
        return None

    def hold(self, host: str, ports: tuple[int, ...] | list[int]) -> None:
        """Mark ports as held (a live attempt's, learned from its worker after a controller restart)."""
        self._hosts.setdefault(host, _Host()).held.update(ports)

    def give_back(self, host: str, ports: tuple[int, ...] | list[int]) -> None:
        entry = self._hosts.get(host)
        if entry is not None:
            entry.held.difference_update(ports)

    def held_outside(self, host: str, ports: tuple[int, ...] | list[int], now_ms: int) -> None:
        """Something outside Iris holds these ports on ``host``: do not hand them out for a while."""
        entry = self._hosts.setdefault(host, _Host())
        entry.held.difference_update(ports)
        for port in ports:
            entry.outside[port] = now_ms + self._outside_hold_ms


__all__ = [
    "DEFAULT_COORDINATOR_PORT",
    "OUTSIDE_HOLD_MS",
    "PortBook",
    "check_port_range",
    "default_port_range",
    "ephemeral_range",
    "parse_port_range",
]
