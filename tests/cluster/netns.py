"""Private test networks: one network namespace per "host", all joined by a bridge that lives in a
namespace of its own (the machine's own network is never touched). Everything is removed on
``close()``, which the fixture calls also when a test fails.

Needs root and ``ip netns`` (iproute2); ``unavailable()`` says why not when it cannot work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"iris-probe-{uuid.uuid4().hex[:6]}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    namespace: str
    address: str
    hub_link: str
    """The bridge-side end of the host's cable (down: the host is cut off)."""

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command on this host (``ip netns exec`` execs it: the PID is the command's)."""
        return ["ip", "netns", "exec", self.namespace]


class Network:
    """A bridge and hosts with addresses ``10.<n>.0.<i>/24``."""

    def __init__(self, subnet: int = 213) -> None:
        self._tag = uuid.uuid4().hex[:5]
        self._subnet = subnet
        self.hub = f"iris-{self._tag}-hub"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._add_namespace(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        namespace = f"iris-{self._tag}-{name}"
        self._add_namespace(namespace)
        inner, outer = f"v{self._tag}{index}a", f"v{self._tag}{index}b"  # interface names: <= 15 chars
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", namespace)
        _ip("link", "set", outer, "netns", self.hub)
        _ip("-n", self.hub, "link", "set", outer, "master", "br0")
        _ip("-n", self.hub, "link", "set", outer, "up")
        address = f"10.{self._subnet}.0.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        host = Host(name, namespace, address, outer)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Partition ``host``: its cable goes down at the bridge; nothing gets in or out."""
        _ip("-n", self.hub, "link", "set", host.hub_link, "down")

    def heal(self, host: Host) -> None:
        _ip("-n", self.hub, "link", "set", host.hub_link, "up")

    def close(self) -> None:
        """Delete every namespace (their interfaces go with them). Stop the processes inside first."""
        for namespace in reversed(self._namespaces):
            _ip("netns", "del", namespace, check=False)
        self._namespaces.clear()
