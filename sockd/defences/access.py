"""Address lists: which peers may use sockd (xinetd's only_from / no_access)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """A CIDR block that is not one; the message names it."""


def parseNetworks(blocks: Iterable[str], what: str) -> tuple[Network, ...]:
    """Address blocks (CIDR or single addresses) as networks; C{none} clears; C{what} names the option in errors."""
    networks = []
    for block in blocks:
        if block.strip().lower() == "none":
            continue
        try:
            network = ipaddress.ip_network(block.strip(), strict=False)
        except ValueError:
            raise AccessError(f"{what}: {block!r} is not an address or CIDR block such as 192.0.2.0/24") from None
        networks.append(_unmapped(network))
    return tuple(networks)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 block is the IPv4 block it maps, as peers are (see L{parseHost})."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        first = network.network_address.ipv4_mapped
        assert first is not None
        return ipaddress.ip_network(f"{first}/{network.prefixlen - 96}")
    return network


def sourceKey(host: str) -> str:
    """One key per peer for counting: IPv4-mapped IPv6 peers count as the IPv4 address they are.

    Called for every connection and datagram, so the common forms are handled without C{ipaddress}.
    """
    if ":" not in host:
        return host
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    address = parseHost(host)
    return str(address) if address is not None else host


def parseHost(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address object; IPv4-mapped IPv6 addresses (dual-stack sockets) become IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(networks: tuple[Network, ...], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address falls in any of the networks of its own family."""
    return any(address in network for network in networks if network.version == address.version)


class AccessList:
    """Allow-then-deny check: a host must match an allow block (if any) and no deny block."""

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = parseNetworks(allow, "--allow")
        self.deny = parseNetworks(deny, "--deny")

    def allows(self, host: str | None) -> bool:
        """Whether C{host} may connect; peers without an IP address (Unix sockets) always may."""
        if host is None:
            return True
        address = parseHost(host)
        if address is None:
            return False
        if self.allow and not contains(self.allow, address):
            return False
        return not contains(self.deny, address)


class HostVerdict(NamedTuple):
    """What the per-address rules say of one peer address."""

    allowed: bool
    exempt: bool
    #: The address it is counted under (IPv4-mapped IPv6 counts as IPv4).
    key: str


class HostRules:
    """The per-address rules of one configuration (access lists, exempt list), decided once per host.

    Connections and datagrams from the same few addresses repeat, so each verdict
    is kept (at most C{maxHosts}, then forgotten all at once) and a peer costs
    one dictionary look-up.  A reload builds new rules, and so a fresh memory.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = (), exempt: Iterable[str] = (),
                 maxHosts: int = 4096) -> None:
        self.access = AccessList(allow, deny)
        self.exempt = parseNetworks(exempt, "--exempt")
        self.maxHosts = maxHosts
        self._known: dict[str, HostVerdict] = {}

    def lookup(self, host: str) -> HostVerdict:
        known = self._known.get(host)
        if known is None:
            address = parseHost(host)
            exempt = address is not None and contains(self.exempt, address)
            known = HostVerdict(self.access.allows(host), exempt, sourceKey(host))
            if len(self._known) >= self.maxHosts:
                self._known.clear()
            self._known[host] = known
        return known
