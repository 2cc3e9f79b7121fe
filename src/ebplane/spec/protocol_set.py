"""The built-in protocols a pipeline can parse, and their dependencies.

This is the one place that lists them: the spec validator, the rule validator
and the code generator all read :data:`KNOWN_PROTOCOLS`, so adding a protocol
means adding one line here (plus its parser).
"""

from __future__ import annotations

from collections.abc import Iterable

# name -> protocols of which at least one must also be listed (empty: none needed).
# The dict order is the canonical order: outer headers first.
KNOWN_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "ethernet": (),
    "vlan": ("ethernet",),
    "ipv4": ("ethernet",),
    "ipv6": ("ethernet",),
    "tcp": ("ipv4", "ipv6"),
    "udp": ("ipv4", "ipv6"),
    "icmp": ("ipv4",),
    "icmpv6": ("ipv6",),
}

REQUIRED_PROTOCOLS: tuple[str, ...] = ("ethernet",)


def canonical_order(names: Iterable[str]) -> tuple[str, ...]:
    """Sort known protocol names into :data:`KNOWN_PROTOCOLS` order.

    Two specs listing the same protocols in a different order are the same
    pipeline; a canonical order keeps generated code and cache keys identical.
    """
    wanted = set(names)
    return tuple(p for p in KNOWN_PROTOCOLS if p in wanted)


def missing_dependency(protocols: Iterable[str]) -> tuple[str, tuple[str, ...]] | None:
    """Return ``(protocol, needs)`` for the first listed protocol whose dependency is absent."""
    listed = set(protocols)
    for name in canonical_order(listed):
        needs = KNOWN_PROTOCOLS[name]
        if needs and not listed.intersection(needs):
            return name, needs
    return None
