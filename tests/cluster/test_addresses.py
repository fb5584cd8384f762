"""Bind vs advertise addresses (``iris.cluster.addresses``)."""

from __future__ import annotations

from iris.cluster.addresses import advertise_host, is_wildcard, primary_address
from iris.cluster.files import is_loopback
from iris.cluster.types import host_port, split_host


def test_advertise_is_the_bound_address_unless_given() -> None:
    assert advertise_host("127.0.0.1") == "127.0.0.1"
    assert advertise_host("10.1.2.3") == "10.1.2.3"
    assert advertise_host("0.0.0.0", "node7.example") == "node7.example"
    assert advertise_host("10.1.2.3", "10.9.9.9") == "10.9.9.9"


def test_wildcard_bind_advertises_the_primary_address_never_a_wildcard() -> None:
    for wildcard in ("0.0.0.0", "::", ""):
        assert is_wildcard(wildcard)
        host = advertise_host(wildcard)
        assert host == primary_address() and not is_wildcard(host)
    # On a machine with any non-loopback interface the primary address is not loopback.
    assert not is_wildcard(primary_address())
    assert is_loopback(primary_address()) or "." in primary_address()


def test_host_port_brackets_ipv6_and_split_host_inverts_it() -> None:
    assert host_port("10.0.0.1", 80) == "10.0.0.1:80"
    assert host_port("::1", 80) == "[::1]:80"
    assert host_port("node7", 80) == "node7:80"
    for host in ("10.0.0.1", "::1", "node7"):
        assert split_host(host_port(host, 5)) == host
