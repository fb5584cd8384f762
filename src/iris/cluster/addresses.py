"""Bind and advertise addresses (DESIGN §2): what a daemon listens on and what others dial.

A daemon binds ``--host`` (default 127.0.0.1) and tells the cluster ``--advertise``: by default the
bound address, or the host's primary address when bound to every interface (0.0.0.0 / ::), so a
worker bound to 0.0.0.0 is never registered as 127.0.0.1 (unreachable from another host)."""

from __future__ import annotations

import socket

import psutil

from iris.cluster.files import is_loopback
from iris.cluster.types import host_port, split_host

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_HOSTS


def primary_address() -> str:
    """The address this host reaches others from: the source address of its default route (a
    connected UDP socket sends nothing), else the first non-loopback IPv4 address of an interface
    that is up, else 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only used to pick a route
            address = str(s.getsockname()[0])
            if not is_loopback(address) and address != "0.0.0.0":
                return address
    except OSError:
        pass  # no route: look at the interfaces
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        for addr in addrs:
            if addr.family == socket.AF_INET and not is_loopback(addr.address):
                return str(addr.address)
    return "127.0.0.1"


def advertise_host(bind_host: str, advertise: str | None = None) -> str:
    """What others dial for a daemon bound to ``bind_host``: ``advertise`` when given, the bound
    address when it is one, the primary address when bound to every interface."""
    if advertise:
        return advertise
    if is_wildcard(bind_host):
        return primary_address()
    return bind_host


__all__ = ["advertise_host", "host_port", "is_wildcard", "primary_address", "split_host"]
