"""Realistic 5-tuple rule sets, in the spirit of ClassBench (Taylor and Turner, 2005), and the
traffic and reference matcher to check a classifier against them.

Our own model, seeded and deterministic (``random.Random(seed)``), IPv4 and IPv6:

- **Seed types** (``acl``, ``fw``, ``ipc``, after ClassBench's acl1, fw1, ipc1 seeds): each is a
  :class:`Profile` of weighted distributions: source and destination prefix lengths, port
  classes, protocols, and how often the action changes from one rule to the next.  ``acl``:
  destinations mostly hosts (/32) and long prefixes, sources spread over all lengths; ``fw``:
  many wildcards; ``ipc``: mixed.
- **Address plan**: prefixes are cut from a few *network trees* (sites, subnets, hosts), so
  they nest and overlap as real ACLs do.  IPv4: trees inside 198.18.0.0/16, IPv6: inside
  2001:db8::/33 (site /48, subnet /64, host /128).  The other half of each test range
  (198.19.0.0/16, 2001:db8:8000::/33) holds no rule's prefix: miss traffic comes from there.
  Prefix lengths are drawn as IPv4 lengths; below /16 a prefix would cover the miss half, so
  those lengths (ClassBench's /0../15) become the wildcard (the field is omitted).  IPv6
  lengths follow the IPv4 ones through :data:`V6_LEN` (/20 -> /48, /24 -> /64, /32 -> /128).
- **Ports** (TCP/UDP rules only): wildcard, an exact well-known port, ``0-1023``,
  ``1024-65535``, or an arbitrary range (``6000-6063``).  ICMP and any-protocol rules never
  have ports.  A rule whose source and destination are both broad (wildcard or /20 and
  shorter) names a service (TCP or UDP, an exact destination port): one "any to a whole
  site, any protocol" rule early in a big set would shadow most rules after it, and the
  miss traffic (UDP to port 9) misses service rules.
- **Actions** come in runs (real ACLs are blocks of permits and denies): each rule keeps the
  previous rule's action except with the profile's ``switch`` probability.  There is no
  final catch-all unless asked for (``final=``): the stage's default decides.

Rules are dicts in the spec's rule format (``{src: 198.18.4.0/24, proto: tcp, dport: 443,
action: drop}``), wildcard fields omitted, ports as ``int`` or ``"lo-hi"``.

:func:`expected_rule` is the first-match reference: plain loops over the rule dicts with the
``ipaddress`` module, nothing shared with ebplane's classifier.  :func:`trace` makes packets
that hit rules at every position (a point inside the rule's box; the expected result is the
reference's, since an earlier rule may shadow the one picked) and packets that miss every rule.
:func:`nft_ruleset` is the nftables encoding of a rule list used by the benchmark.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

KINDS: tuple[str, ...] = ("acl", "fw", "ipc")
SIZES: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000)

V4_TREES = ipaddress.IPv4Network("198.18.0.0/16")    # every rule prefix is inside
V4_MISS = ipaddress.IPv4Network("198.19.0.0/16")     # no rule prefix touches it
V6_TREES = ipaddress.IPv6Network("2001:db8::/33")
V6_MISS = ipaddress.IPv6Network("2001:db8:8000::/33")
V4_SPACE = ipaddress.IPv4Network("198.18.0.0/15")
V6_SPACE = ipaddress.IPv6Network("2001:db8::/32")
MIN_V4_LEN = 16  # shorter drawn lengths become the wildcard
# a rule whose source and destination are both this broad (IPv4 length, or wildcard) names a
# service: otherwise one such rule would shadow most of what follows it
BROAD_LEN = 20

# IPv4 length -> IPv6 length (sites /20 ~ /48, subnets /24 ~ /64, hosts /32 ~ /128)
V6_LEN: dict[int, int] = {16: 34, 17: 36, 18: 40, 19: 44, 20: 48, 21: 52, 22: 56, 23: 60,
                          24: 64, 25: 80, 26: 96, 27: 104, 28: 112, 29: 116, 30: 120, 31: 124,
                          32: 128}

WELL_KNOWN_PORTS: tuple[int, ...] = (20, 21, 22, 23, 25, 53, 67, 69, 80, 110, 123, 137, 143,
                                     161, 179, 389, 443, 445, 514, 587, 636, 993, 995, 1433,
                                     1521, 1723, 3306, 3389, 5060, 5432, 8080, 8443)
MISS_DPORT = 9  # discard: never a well-known port above, so service rules miss it
PORT_CLASSES: tuple[str, ...] = ("any", "exact", "low", "high", "range")
RANGE_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 100, 256, 1000)
PROTO_CHOICES: tuple[str, ...] = ("tcp", "udp", "icmp", "any")
IP_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}


@dataclass(frozen=True)
class Profile:
    """The statistics of one seed type: weights by value (0 = wildcard for lengths)."""
    name: str
    src_len: dict[int, float]
    dst_len: dict[int, float]
    sport: dict[str, float]
    dport: dict[str, float]
    proto: dict[str, float]
    switch: float        # probability that a rule's action differs from the previous one
    drop_share: float    # probability that the first run is drop
    sites: int           # network trees


PROFILES: dict[str, Profile] = {
    "acl": Profile(
        "acl",
        src_len={0: 14, 16: 3, 18: 2, 20: 5, 21: 2, 22: 4, 23: 3, 24: 22, 25: 2, 26: 4, 27: 3,
                 28: 6, 29: 4, 30: 3, 31: 1, 32: 22},
        dst_len={0: 3, 16: 1, 20: 2, 24: 10, 26: 2, 28: 5, 29: 3, 30: 4, 31: 2, 32: 68},
        sport={"any": 80, "high": 15, "exact": 3, "range": 2},
        dport={"any": 15, "exact": 60, "low": 5, "high": 8, "range": 12},
        proto={"tcp": 62, "udp": 25, "icmp": 6, "any": 7},
        switch=0.03, drop_share=0.5, sites=6),
    "fw": Profile(
        "fw",
        src_len={0: 45, 16: 4, 20: 4, 24: 15, 28: 5, 32: 27},
        dst_len={0: 28, 16: 3, 20: 3, 24: 18, 28: 4, 32: 44},
        sport={"any": 88, "high": 8, "range": 4},
        dport={"any": 38, "exact": 35, "low": 5, "high": 7, "range": 15},
        proto={"tcp": 50, "udp": 22, "icmp": 8, "any": 20},
        switch=0.1, drop_share=0.6, sites=4),
    "ipc": Profile(
        "ipc",
        src_len={0: 22, 16: 4, 18: 3, 20: 7, 22: 4, 24: 20, 26: 4, 28: 7, 30: 5, 32: 24},
        dst_len={0: 18, 16: 4, 20: 6, 22: 4, 24: 22, 26: 4, 28: 6, 30: 5, 32: 31},
        sport={"any": 60, "exact": 12, "low": 6, "high": 14, "range": 8},
        dport={"any": 30, "exact": 40, "low": 8, "high": 10, "range": 12},
        proto={"tcp": 45, "udp": 35, "icmp": 10, "any": 10},
        switch=0.05, drop_share=0.5, sites=8),
}

# the low-shape variant: few prefix lengths, no source port, exact destination ports; the
# tuple-space classifier (32 shapes at most) accepts it
LOW_SHAPE = Profile(
    "low-shape",
    src_len={0: 20, 24: 40, 32: 40}, dst_len={24: 30, 32: 70},
    sport={"any": 1}, dport={"any": 30, "exact": 70},
    proto={"tcp": 60, "udp": 30, "icmp": 10},
    switch=0.05, drop_share=0.5, sites=6)


def _pick(rng: random.Random, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


# -- the address plan -------------------------------------------------------------------------

class _Trees:
    """Sites (weighted, Zipf-like), subnets per site, host pools per subnet."""

    def __init__(self, rng: random.Random, family: int, sites: int, n: int):
        self.family = family
        # bigger rule sets spread over more sites and subnets (IPv4: at most the 16 /20s of
        # the tree half and their 16 /24s each)
        k = -(-n // 10_000) if n > 10_000 else 1
        sites, subnets = sites * k, 12 * k
        if family == 4:
            sites, subnets = min(sites, 16), min(subnets, 16)
        if family == 4:
            site_len, sub_len, bits = 20, 24, 32
            base = int(V4_TREES.network_address)
            site_ids = rng.sample(range(1 << (site_len - V4_TREES.prefixlen)), sites)
        else:
            site_len, sub_len, bits = 48, 64, 128
            base = int(V6_TREES.network_address)
            site_ids = rng.sample(range(1 << (site_len - V6_TREES.prefixlen)), sites)
        # enough hosts that n rules can differ; IPv4 subnets hold 254
        hosts = max(4, min(254, -(-2 * n // (sites * subnets))))
        self.sites: list[list[list[int]]] = []
        for sid in site_ids:
            site = base | (sid << (bits - site_len))
            subs = []
            for sub in rng.sample(range(1 << min(sub_len - site_len, 16)), subnets):
                net = site | (sub << (bits - sub_len))
                if family == 4:
                    ids = rng.sample(range(1, 255), hosts)
                else:
                    ids = [rng.getrandbits(64) | 1 for _ in range(hosts)]
                subs.append([net | h for h in ids])
            self.sites.append(subs)
        self.weights = [1.0 / (i + 1) for i in range(sites)]

    def prefix(self, rng: random.Random, v4_len: int) -> str | None:
        """A prefix of (IPv4-equivalent) length ``v4_len`` around a host of the trees; None
        for the wildcard."""
        if v4_len < MIN_V4_LEN:
            return None
        site = rng.choices(self.sites, weights=self.weights)[0]
        host = rng.choice(rng.choice(site))
        if self.family == 4:
            return str(ipaddress.IPv4Network((host, v4_len), strict=False))
        return str(ipaddress.IPv6Network((host, V6_LEN[v4_len]), strict=False))


def _ports(rng: random.Random, cls: str) -> int | str:
    if cls == "exact":
        return rng.choice(WELL_KNOWN_PORTS)
    if cls == "low":
        return "0-1023"
    if cls == "high":
        return "1024-65535"
    lo = rng.randrange(1024, 65000)
    hi = min(65535, lo + rng.choice(RANGE_WIDTHS) - 1)
    return f"{lo}-{hi}"


def profile(kind: str, *, low_shape: bool = False) -> Profile:
    """The profile of seed type ``kind``; ``low_shape`` (or kind ``low-shape``): the
    low-shape variant."""
    if low_shape or kind == LOW_SHAPE.name:
        return LOW_SHAPE
    try:
        return PROFILES[kind]
    except KeyError:
        raise ValueError(f"unknown seed type {kind!r}; choose from {', '.join(KINDS)}") from None


def generate(n: int, *, kind: str = "acl", family: int = 4, seed: int = 1,
             low_shape: bool = False, final: str | None = None) -> list[dict]:
    """``n`` distinct rules of seed type ``kind`` (``final``: the last of them is a
    catch-all with that action)."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    if n < 0:
        raise ValueError(f"cannot generate {n} rules")
    p = profile(kind, low_shape=low_shape)
    rng = random.Random(f"{p.name}/{family}/{seed}")
    body = n - 1 if final and n else n
    trees = _Trees(rng, family, p.sites, body)
    icmp = "icmp" if family == 4 else "icmpv6"
    rules: list[dict] = []
    seen: set[tuple] = set()
    action = "drop" if rng.random() < p.drop_share else "pass"
    attempts = 0
    while len(rules) < body:
        attempts += 1
        if attempts > 50 * body + 1000:
            raise RuntimeError(f"could not draw {body} distinct rules of type {p.name}")
        r: dict[str, Any] = {}
        src_len, dst_len = _pick(rng, p.src_len), _pick(rng, p.dst_len)
        src, dst = trees.prefix(rng, src_len), trees.prefix(rng, dst_len)
        proto = _pick(rng, p.proto)
        sport_cls = dport_cls = "any"
        if proto in ("tcp", "udp"):
            sport_cls, dport_cls = _pick(rng, p.sport), _pick(rng, p.dport)
        if src_len <= BROAD_LEN and dst_len <= BROAD_LEN:  # broad on both sides: a service
            if proto not in ("tcp", "udp"):
                proto = rng.choice(("tcp", "udp"))
            dport_cls = "exact"
        if src is not None:
            r["src"] = src
        if dst is not None:
            r["dst"] = dst
        if proto != "any":
            r["proto"] = icmp if proto == "icmp" else proto
        if sport_cls != "any":
            r["sport"] = _ports(rng, sport_cls)
        if dport_cls != "any":
            r["dport"] = _ports(rng, dport_cls)
        box = tuple(sorted(r.items()))
        if box in seen:
            continue
        seen.add(box)
        if rules and rng.random() < p.switch:
            action = "pass" if action == "drop" else "drop"
        r["action"] = action
        rules.append(r)
    if final and n:
        rules.append({"action": final})
    return rules


# -- the reference matcher --------------------------------------------------------------------

def _range(value: int | str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    lo, _, hi = str(value).partition("-")
    return (int(lo), int(hi)) if hi else (int(lo), int(lo))


class Reference:
    """First match over rule dicts, the rules parsed once.  Obviously correct on purpose:
    one loop over the rules, one test per field; a prefix holds an address when the address
    masked to the prefix length equals the prefix's address (``ipaddress`` does the parsing)."""

    def __init__(self, rules: Sequence[dict]):
        self.rules = list(rules)
        self._parsed = []
        for r in self.rules:
            self._parsed.append((
                _net(r["src"]) if "src" in r else None,
                _net(r["dst"]) if "dst" in r else None,
                IP_PROTO[r["proto"]] if isinstance(r.get("proto"), str) else r.get("proto"),
                _range(r["sport"]) if "sport" in r else None,
                _range(r["dport"]) if "dport" in r else None))

    def expected(self, pkt: dict) -> int | None:
        """Index of the first rule ``pkt`` matches, or None."""
        src_addr, dst_addr = ipaddress.ip_address(pkt["src"]), ipaddress.ip_address(pkt["dst"])
        version, src, dst = src_addr.version, int(src_addr), int(dst_addr)
        proto = packet_proto(pkt)
        has_ports = pkt["proto"] in ("tcp", "udp")
        sport, dport = pkt["sport"], pkt["dport"]
        for i, (rsrc, rdst, rproto, rsport, rdport) in enumerate(self._parsed):
            if rsrc is not None and (rsrc[0] != version or src & rsrc[2] != rsrc[1]):
                continue
            if rdst is not None and (rdst[0] != version or dst & rdst[2] != rdst[1]):
                continue
            if rproto is not None and rproto != proto:
                continue
            if rsport is not None and not (has_ports and rsport[0] <= sport <= rsport[1]):
                continue
            if rdport is not None and not (has_ports and rdport[0] <= dport <= rdport[1]):
                continue
            return i
        return None

    def verdict(self, pkt: dict, default: str = "pass") -> str:
        """``XDP_DROP`` / ``XDP_PASS`` as a filter with ``default`` decides."""
        i = self.expected(pkt)
        action = default if i is None else self.rules[i]["action"]
        return "XDP_DROP" if action == "drop" else "XDP_PASS"


def _net(text: str) -> tuple[int, int, int]:
    """(version, network address, netmask) of a prefix, as integers."""
    net = ipaddress.ip_network(text)
    return net.version, int(net.network_address), int(net.netmask)


def expected_rule(rules: Sequence[dict], pkt: dict) -> int | None:
    """Index of the first rule of ``rules`` that ``pkt`` matches, or None."""
    return Reference(rules).expected(pkt)


def packet_proto(pkt: dict) -> int:
    """The IP protocol number of a packet (its ICMP follows the family)."""
    if pkt["proto"] == "icmp":
        return 1 if pkt["family"] == 4 else 58
    return IP_PROTO[pkt["proto"]]


# -- traffic ----------------------------------------------------------------------------------

def _addr_in(rng: random.Random, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    host_bits = net.max_prefixlen - net.prefixlen
    return str(ipaddress.ip_address(int(net.network_address) | rng.getrandbits(host_bits)
                                    if host_bits else int(net.network_address)))


def _in_range(rng: random.Random, value: int | str | None) -> int:
    lo, hi = _range(value) if value is not None else (1, 65535)
    return rng.randint(lo, hi)


def packet_in(rule: dict, family: int, rng: random.Random, *, wild: bool = False) -> dict:
    """A packet inside ``rule``'s box (its first match may still be an earlier rule).  The
    fields the rule leaves open take any value; with ``wild``, open addresses come from the
    miss half of the test range, where no rule's prefix lies, so that the packet is less
    likely to be shadowed by an earlier rule."""
    space = V4_SPACE if family == 4 else V6_SPACE
    if wild:
        space = V4_MISS if family == 4 else V6_MISS
    src = _addr_in(rng, ipaddress.ip_network(rule["src"]) if "src" in rule else space)
    dst = _addr_in(rng, ipaddress.ip_network(rule["dst"]) if "dst" in rule else space)
    proto = rule.get("proto")
    if proto is None:
        proto = rng.choice(("tcp", "udp") if "sport" in rule or "dport" in rule
                           else ("tcp", "udp", "icmp"))
    elif proto == "icmpv6":
        proto = "icmp"
    if proto == "icmp":  # sport: the echo id
        return {"family": family, "src": src, "dst": dst, "proto": "icmp",
                "sport": rng.randint(1, 65535), "dport": 0}
    return {"family": family, "src": src, "dst": dst, "proto": proto,
            "sport": _in_range(rng, rule.get("sport")), "dport": _in_range(rng, rule.get("dport"))}


def miss_packet(family: int, rng: random.Random) -> dict:
    """A packet that misses every generated rule (a final catch-all excepted): addresses
    from the miss half of the test range, UDP to port 9."""
    net = V4_MISS if family == 4 else V6_MISS
    return {"family": family, "src": _addr_in(rng, net), "dst": _addr_in(rng, net),
            "proto": "udp", "sport": rng.randint(1024, 65535), "dport": MISS_DPORT}


@dataclass(frozen=True)
class TracePacket:
    packet: dict
    picked: int | None     # the rule the packet was drawn inside (None: a miss packet)
    expected: int | None   # the first match, by the reference

    def flow(self):
        return to_flow(self.packet)


def trace(rules: Sequence[dict], *, family: int, n: int, seed: int = 1,
          miss_fraction: float = 0.1, ref: Reference | None = None) -> list[TracePacket]:
    """``n`` packets: about ``miss_fraction`` of them miss every rule, the others hit rules
    spread evenly over all positions (stratified: rule ``k * len / hits`` and on)."""
    rng = random.Random(f"trace/{family}/{seed}")
    ref = ref or Reference(rules)
    misses = round(n * miss_fraction) if rules else n
    hits = n - misses
    out: list[TracePacket] = []
    for k in range(hits):
        i = min(len(rules) - 1, int((k + rng.random()) * len(rules) / hits))
        pkt = packet_in(rules[i], family, rng)
        out.append(TracePacket(pkt, i, ref.expected(pkt)))
    for _ in range(misses):
        pkt = miss_packet(family, rng)
        out.append(TracePacket(pkt, None, ref.expected(pkt)))
    rng.shuffle(out)
    return out


def late_hit(rules: Sequence[dict], family: int, rng: random.Random, *,
             action: str | None = None, ref: Reference | None = None,
             seconds: float = 10.0) -> TracePacket | None:
    """A packet whose first match is a rule near the end of ``rules``: the latest rule,
    searched from the end backwards (a few points each, open addresses from the miss half),
    whose point is not shadowed by an earlier rule; optionally only rules with ``action``.
    None if none is found within ``seconds``."""
    ref = ref or Reference(rules)
    deadline = time.monotonic() + seconds
    for i in range(len(rules) - 1, -1, -1):
        if action is not None and rules[i]["action"] != action:
            continue
        if not any(k in rules[i] for k in ("src", "dst", "proto", "sport", "dport")):
            continue  # a catch-all: not a "late hit"
        for _ in range(3):
            pkt = packet_in(rules[i], family, rng, wild=True)
            if ref.expected(pkt) == i:
                return TracePacket(pkt, i, i)
        if time.monotonic() > deadline:
            break
    return None


def to_flow(pkt: dict):
    from ebplane.lab.traffic import Flow
    return Flow(pkt["proto"], pkt["src"], pkt["dst"], pkt["sport"], pkt["dport"])


# -- statistics (tests, report) ---------------------------------------------------------------

def port_class(value: int | str | None) -> str:
    if value is None:
        return "any"
    lo, hi = _range(value)
    if lo == hi:
        return "exact"
    if (lo, hi) == (0, 1023):
        return "low"
    if (lo, hi) == (1024, 65535):
        return "high"
    return "range"


def stats(rules: Iterable[dict]) -> dict:
    """Histograms: prefix lengths (0 = wildcard) of src/dst, port classes, protocols, actions."""
    out: dict[str, dict] = {k: {} for k in ("src_len", "dst_len", "sport", "dport", "proto",
                                            "action")}

    def bump(key: str, value: Any) -> None:
        out[key][value] = out[key].get(value, 0) + 1
    for r in rules:
        for f in ("src", "dst"):
            bump(f"{f}_len", ipaddress.ip_network(r[f]).prefixlen if f in r else 0)
        bump("sport", port_class(r.get("sport")))
        bump("dport", port_class(r.get("dport")))
        bump("proto", r.get("proto", "any"))
        bump("action", r["action"])
    return out


# -- nftables encoding ------------------------------------------------------------------------

_NFT_FIELDS = ("src", "dst", "proto", "sport", "dport")


def _nft_expr(field: str, family: int) -> str:
    ip = "ip" if family == 4 else "ip6"
    return {"src": f"{ip} saddr", "dst": f"{ip} daddr", "proto": "meta l4proto",
            "sport": "th sport", "dport": "th dport"}[field]


def _nft_type(field: str, family: int) -> str:
    return {"src": f"ipv{family}_addr", "dst": f"ipv{family}_addr", "proto": "inet_proto",
            "sport": "inet_service", "dport": "inet_service"}[field]


def _nft_value(field: str, value: Any) -> str:
    if field == "proto":
        return "ipv6-icmp" if value == "icmpv6" else str(value)
    return str(value)


def _expand(r: dict) -> list[dict]:
    """Ports without a proto mean TCP or UDP (the spec's meaning): two rules for nft."""
    if "proto" not in r and ("sport" in r or "dport" in r):
        return [{**r, "proto": "tcp"}, {**r, "proto": "udp"}]
    return [r]


def _boxes_overlap(a: dict, b: dict, fields: tuple[str, ...]) -> bool:
    for f in fields:
        if f in ("src", "dst"):
            na, nb = ipaddress.ip_network(a[f]), ipaddress.ip_network(b[f])
            if not (na.subnet_of(nb) or nb.subnet_of(na)):
                return False
        elif f == "proto":
            if a[f] != b[f]:
                return False
        else:
            (alo, ahi), (blo, bhi) = _range(a[f]), _range(b[f])
            if ahi < blo or bhi < alo:
                return False
    return True


@dataclass(frozen=True)
class NftEncoding:
    text: str          # for ``nft -f -``
    rules: int         # rules in the chain
    sets: int          # named sets (concatenations)
    elements: int      # elements in all sets


def nft_ruleset(rules: Sequence[dict], *, family: int, table: str, device: str,
                counter: str = "cbdrop", pass_counter: str | None = None) -> NftEncoding:
    """One netdev-ingress chain that decides as first match over ``rules`` (policy accept,
    the filter's default pass); every drop rule counts into the named counter ``counter``,
    and with ``pass_counter`` every packet let through (by a rule, or by the policy if it comes
    from the test range) counts there.

    Encoding: split the list into runs of consecutive rules with the same action (inside a
    run the order cannot matter: every match there has the same outcome, and a packet that
    matches none goes on).  Inside a run, rules are grouped by *shape* (which fields they
    test); a group of one is a plain rule, a bigger group one lookup in a named set keyed by
    the concatenation of its fields (``ip saddr . ip daddr . meta l4proto . th dport
    @s12``), prefixes and ranges as interval elements.  The kernel's set back-end (pipapo)
    refuses elements whose boxes overlap, so overlapping elements go to further sets (greedy
    colouring), each its own rule.  Single-field groups use an anonymous interval set
    (overlaps are merged, which keeps the union).  Exact: same verdict as first match.
    """
    lines: list[str] = []
    sets: list[str] = []
    n_rules = n_elements = 0
    verdict = {"drop": f'counter name "{counter}" drop',
               "pass": f'counter name "{pass_counter}" accept' if pass_counter else "accept"}
    i = 0
    while i < len(rules):
        j = i
        while j < len(rules) and rules[j]["action"] == rules[i]["action"]:
            j += 1
        groups: dict[tuple[str, ...], list[dict]] = {}
        for r in (x for rule in rules[i:j] for x in _expand(rule)):
            groups.setdefault(tuple(f for f in _NFT_FIELDS if f in r), []).append(r)
        stmt = verdict[rules[i]["action"]]
        for fields, members in groups.items():
            if len(members) == 1 or len(fields) == 0:
                lines.append(_plain(members[0], fields, family, stmt))
                n_rules += 1
                continue
            if len(fields) == 1:
                f = fields[0]
                elems = sorted({_nft_value(f, r[f]) for r in members})
                lines.append(f"{_nft_expr(f, family)} {{ {', '.join(elems)} }} {stmt}")
                n_rules += 1
                continue
            colours: list[list[dict]] = []
            for r in members:
                for c in colours:
                    if not any(_boxes_overlap(r, o, fields) for o in c):
                        c.append(r)
                        break
                else:
                    colours.append([r])
            for c in colours:
                name = f"s{len(sets)}"
                elems = [" . ".join(_nft_value(f, r[f]) for f in fields) for r in c]
                sets.append(f"  set {name} {{\n    type {' . '.join(_nft_type(f, family) for f in fields)};"
                            f" flags interval;\n    elements = {{ {', '.join(elems)} }}\n  }}")
                n_elements += len(elems)
                lines.append(f"{' . '.join(_nft_expr(f, family) for f in fields)} @{name} {stmt}")
                n_rules += 1
        i = j
    counters = f"  counter {counter} {{ }}\n"
    if pass_counter:
        # what falls through to the policy, from the test range (not the veth's own IPv6
        # neighbour discovery)
        space = V4_SPACE if family == 4 else V6_SPACE
        lines.append(f'{_nft_expr("src", family)} {space} counter name "{pass_counter}"')
        counters += f"  counter {pass_counter} {{ }}\n"
    text = (f"table netdev {table} {{\n{counters}" + "\n".join(sets)
            + ("\n" if sets else "")
            + f"  chain ingress {{\n    type filter hook ingress device \"{device}\" priority 0;"
              f" policy accept;\n" + "".join(f"    {ln}\n" for ln in lines) + "  }\n}\n")
    return NftEncoding(text, n_rules, len(sets), n_elements)


def _plain(r: dict, fields: tuple[str, ...], family: int, stmt: str) -> str:
    return " ".join([f"{_nft_expr(f, family)} {_nft_value(f, r[f])}" for f in fields] + [stmt])
