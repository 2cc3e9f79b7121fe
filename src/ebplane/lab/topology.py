"""Labs: network namespaces joined by veth pairs, described in YAML.

A lab lets ebplane (and its tests and demo) run a real data plane without
touching the host's network: every node is a namespace named ``LAB-NODE``
(``ebp-lab-dut``), every link a veth pair.  The topology format::

    lab: ebp-lab                      # prefix of the namespace names
    nodes:
      client: {}
      dut: {forward: true}            # IPv4 and IPv6 forwarding on
    links:
      - a: client:eth0                # NODE:IFNAME at each end
        b: dut:eth0
        a_addr: [198.18.1.2/24, 2001:db8:1::2/64]
        b_addr: [198.18.1.1/24, 2001:db8:1::1/64]
        mtu: 1500                     # optional, both ends
    routes:
      client: [default via 198.18.1.1, 2001:db8:2::/64 via 2001:db8:1::1]

``lab.up()`` is all-or-nothing, and records what it created under
``/run/ebplane/labs/LAB.json`` so that ``lab down`` works from any process.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ebplane.errors import KernelError, SpecError, UsageError
from ebplane.net import iface, netns
from ebplane.spec.located import Where, load_located

DEFAULT_TOPOLOGY = Path(__file__).with_name("default.yaml")
DEFAULT_LAB = "ebp-lab"
RECORD_DIR = Path("/run/ebplane/labs")
CARRIER_TIMEOUT = 5.0

_LAB_RE = re.compile(r"^ebp-[a-z0-9][a-z0-9-]{0,39}$")
_NODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ - 1 bytes
_ROUTE_RE = re.compile(r"^\s*(\S+)\s+via\s+(\S+)\s*$")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """One end of a link: an interface in a node, with its addresses."""

    node: str
    ifname: str
    addrs: tuple[IPInterface, ...]

    def __str__(self) -> str:
        return f"{self.node}:{self.ifname}"


@dataclass(frozen=True)
class Link:
    """A veth pair between two endpoints."""

    a: Endpoint
    b: Endpoint
    mtu: int | None = None


@dataclass(frozen=True)
class Route:
    """A static route ``DEST via GATEWAY`` (DEST is ``default`` or a prefix)."""

    dest: str
    via: IPAddress

    def __str__(self) -> str:
        return f"{self.dest} via {self.via}"


@dataclass(frozen=True)
class Node:
    """A network namespace of the lab."""

    name: str
    forward: bool = False
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Topology:
    """A validated lab description; ``text`` is kept so a record can rebuild it."""

    name: str
    nodes: dict[str, Node]
    links: tuple[Link, ...]
    source: str
    text: str

    def ns(self, node: str) -> str:
        """The namespace name of ``node``."""
        if node not in self.nodes:
            raise UsageError(f"lab {self.name!r} has no node {node!r}",
                             hint=f"nodes: {', '.join(self.nodes)}")
        return f"{self.name}-{node}"

    def endpoints(self, node: str) -> list[Endpoint]:
        """The interfaces of ``node``, in link order."""
        return [e for link in self.links for e in (link.a, link.b) if e.node == node]

    def renamed(self, name: str) -> "Topology":
        """The same topology under another lab name (for example a test's private copy)."""
        _check_lab_name(name, Where(root="name"))
        return dataclasses.replace(self, name=name)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Topology":
        """Read and validate a topology file; None means the default lab."""
        file = Path(path) if path is not None else DEFAULT_TOPOLOGY
        try:
            text = file.read_text()
        except FileNotFoundError:
            raise SpecError("topology file not found", file=str(file),
                            hint="give an existing YAML file, or omit --topology "
                                 "for the default lab") from None
        except OSError as e:
            raise SpecError(f"cannot read topology file: {e.strerror}", file=str(file)) from None
        return cls.parse(text, str(file))

    @classmethod
    def parse(cls, text: str, source: str = "<topology>") -> "Topology":
        """Validate YAML ``text``; errors are SpecErrors pointing at ``source``:line."""
        return _parse(text, source)


def _check_lab_name(name, where: Where) -> None:
    if not isinstance(name, str) or not _LAB_RE.match(name):
        raise where.error("a lab name is 'ebp-' and then up to 40 of a-z, 0-9, '-'",
                          given=name, hint="for example: lab: ebp-lab")


def _mapping(value, where: Where, *, allowed: tuple[str, ...] | None = None,
             required: tuple[str, ...] = ()) -> dict:
    """``value`` as a mapping (null counts as empty), checking its keys."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise where.error("expected a mapping", given=value)
    for key in value:
        if not isinstance(key, str):
            raise (where / str(key)).error("keys must be strings", given=key, key=True)
        if allowed is not None and key not in allowed:
            raise (where / key).error("unknown key", allowed=", ".join(allowed), key=True)
    for key in required:
        if key not in value:
            raise where.error(f"missing required key {key!r}")
    return value


def _list(value, where: Where) -> list:
    if not isinstance(value, list):
        raise where.error("expected a list", given=value,
                          hint="write a YAML list: [x, y] or one '- x' per line")
    return value


def _string(value, where: Where) -> str:
    if not isinstance(value, str):
        raise where.error("expected a string", given=value)
    return value


def _parse(text: str, source: str) -> Topology:
    """Validate a topology document (see the module docstring)."""
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise SpecError("the topology file is empty", file=source,
                        hint=f"see {DEFAULT_TOPOLOGY} for an example")
    doc, where = load_located(text, source)
    top = _mapping(doc, where, allowed=("lab", "nodes", "links", "routes"),
                   required=("lab", "nodes", "links"))
    _check_lab_name(top["lab"], where / "lab")
    nodes = _nodes(top["nodes"], where / "nodes")
    links = _links(top["links"], where / "links", nodes)
    routes = _routes(top.get("routes"), where / "routes", nodes)
    nodes = {n: dataclasses.replace(node, routes=tuple(routes.get(n, ())))
             for n, node in nodes.items()}
    return Topology(name=top["lab"], nodes=nodes, links=tuple(links), source=source, text=text)


def _nodes(value, where: Where) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for name, spec in _mapping(value, where).items():
        if not _NODE_RE.match(name):
            raise (where / name).error("a node name is a-z then up to 15 of a-z, 0-9, '_'",
                                       given=name, key=True)
        forward = _mapping(spec, where / name, allowed=("forward",)).get("forward", False)
        if not isinstance(forward, bool):
            raise (where / name / "forward").error("expected true or false", given=forward)
        nodes[name] = Node(name=name, forward=forward)
    if not nodes:
        raise where.error("a lab needs at least one node")
    return nodes


def _links(value, where: Where, nodes: dict[str, Node]) -> list[Link]:
    links: list[Link] = []
    ifnames: set[tuple[str, str]] = set()
    addrs: set[IPAddress] = set()
    for i, entry in enumerate(_list(value, where)):
        at = where / i
        fields = _mapping(entry, at, allowed=("a", "b", "a_addr", "b_addr", "mtu"),
                          required=("a", "b"))
        ends = []
        for side in ("a", "b"):
            node, ifname = _endpoint(fields[side], at / side, nodes)
            if (node, ifname) in ifnames:
                raise (at / side).error(f"interface {ifname!r} of node {node!r} is already "
                                        "used by another link")
            ifnames.add((node, ifname))
            ends.append(Endpoint(node, ifname, _addrs(fields.get(f"{side}_addr"),
                                                      at / f"{side}_addr", addrs)))
        mtu = fields.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                                or not 68 <= mtu <= 65535):
            raise (at / "mtu").error("expected an MTU", given=mtu, allowed="68 to 65535")
        links.append(Link(ends[0], ends[1], mtu))
    return links


def _endpoint(value, where: Where, nodes: dict[str, Node]) -> tuple[str, str]:
    text = _string(value, where)
    node, sep, ifname = text.partition(":")
    if not sep:
        raise where.error("expected NODE:IFNAME", given=text, hint="for example: dut:eth0")
    if node not in nodes:
        raise where.error(f"unknown node {node!r}", allowed=", ".join(nodes),
                          hint="declare it under nodes:")
    if not _IFNAME_RE.match(ifname):
        raise where.error("an interface name is 1 to 15 of A-Z, a-z, 0-9, '_', '.', '-'",
                          given=ifname)
    return node, ifname


def _addrs(value, where: Where, seen: set[IPAddress]) -> tuple[IPInterface, ...]:
    result = []
    for i, entry in enumerate(_list(value, where) if value is not None else []):
        text = _string(entry, where / i)
        try:
            if "/" not in text:
                raise ValueError("no prefix length")
            addr = ipaddress.ip_interface(text)
        except ValueError:
            raise (where / i).error("expected ADDRESS/PREFIXLEN", given=text,
                                    hint="for example 198.18.1.2/24 or 2001:db8:1::2/64") from None
        if addr.ip in seen:
            raise (where / i).error(f"address {addr.ip} is assigned twice in this lab")
        seen.add(addr.ip)
        result.append(addr)
    return tuple(result)


def _routes(value, where: Where, nodes: dict[str, Node]) -> dict[str, list[Route]]:
    routes: dict[str, list[Route]] = {}
    for node, entries in _mapping(value, where).items():
        if node not in nodes:
            raise (where / node).error(f"unknown node {node!r}", allowed=", ".join(nodes),
                                       key=True)
        for i, entry in enumerate(_list(entries, where / node)):
            at = where / node / i
            text = _string(entry, at)
            m = _ROUTE_RE.match(text)
            if not m:
                raise at.error("expected 'DEST via GATEWAY'", given=text,
                               hint="for example: default via 198.18.1.1")
            dest, via_text = m.groups()
            try:
                via = ipaddress.ip_address(via_text)
            except ValueError:
                raise at.error("the gateway is not an IP address", given=via_text) from None
            if dest != "default":
                try:
                    net = ipaddress.ip_network(dest)
                except ValueError:
                    raise at.error("the destination is neither 'default' nor a network "
                                   "PREFIX/LEN", given=dest) from None
                if net.version != via.version:
                    raise at.error("destination and gateway are of different IP versions",
                                   given=text)
                dest = str(net)
            routes.setdefault(node, []).append(Route(dest, via))
    return routes


class Lab:
    """A topology brought to life (or torn down) in network namespaces."""

    def __init__(self, topology: Topology):
        self.topology = topology

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def record_path(self) -> Path:
        return RECORD_DIR / f"{self.name}.json"

    def ns(self, node: str) -> str:
        """The namespace name of ``node`` (``ebp-lab-dut`` for the default lab's dut)."""
        return self.topology.ns(node)

    def namespaces(self) -> list[str]:
        return [self.ns(n) for n in self.topology.nodes]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, name: str | None = None) -> "Lab":
        """The lab of a topology file (None: the default lab), optionally renamed."""
        topology = Topology.load(path)
        return cls(topology.renamed(name) if name else topology)

    @classmethod
    def running(cls, name: str = DEFAULT_LAB) -> "Lab | None":
        """The lab recorded as up under ``name`` (by any process), or None.

        The record holds the topology text, so this works without the file.
        """
        path = RECORD_DIR / f"{name}.json"
        try:
            record = json.loads(path.read_text())
            topology = Topology.parse(record["topology"], record["source"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, SpecError) as e:
            raise UsageError(f"the lab record {path} is unreadable: {e}",
                             hint=f"delete it and the lab's namespaces by hand: rm {path}; "
                                  f"ip netns delete {name}-NODE") from None
        return cls(topology.renamed(record.get("lab", topology.name)))

    @staticmethod
    def recorded() -> list[str]:
        """Names of the labs with a record, i.e. brought up and not yet torn down."""
        try:
            return sorted(p.stem for p in RECORD_DIR.glob("*.json"))
        except OSError:
            return []

    def is_up(self) -> bool:
        return self.record_path.exists() and all(netns.exists(n) for n in self.namespaces())

    def up(self) -> None:
        """Create every namespace, link, address and route; on any failure, none remain."""
        taken = [n for n in self.namespaces() if netns.exists(n)]
        if taken or self.record_path.exists():
            raise UsageError(f"lab {self.name!r} is already up (or left over)",
                             hint="tear it down first: `ebplane lab down`"
                                  + (f" (namespaces: {', '.join(taken)})" if taken else ""))
        try:
            self._write_record()
            for node in self.topology.nodes.values():
                self._make_node(node)
            for link in self.topology.links:
                self._make_link(link)
            self._wait_carrier()
            for node in self.topology.nodes.values():
                for route in node.routes:
                    self._ip(node.name, ["-6" if route.via.version == 6 else "-4", "route",
                                         "add", route.dest, "via", str(route.via)],
                             f"route {route} in node {node.name!r}")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove the lab's namespaces (and with them its veths) and its record.

        Idempotent: parts already gone are skipped.
        """
        names = set(self.namespaces())
        try:
            names.update(json.loads(self.record_path.read_text()).get("namespaces", []))
        except (OSError, ValueError, AttributeError):
            pass
        for name in sorted(names):
            netns.remove(name)
        self.record_path.unlink(missing_ok=True)

    def state(self) -> dict:
        """A JSON-ready description: the nodes, their namespaces, addresses and routes."""
        nodes = {}
        for node in self.topology.nodes.values():
            ns = self.ns(node.name)
            nodes[node.name] = {
                "netns": ns, "exists": netns.exists(ns), "forward": node.forward,
                "interfaces": {e.ifname: [str(a) for a in e.addrs]
                               for e in self.topology.endpoints(node.name)},
                "routes": [str(r) for r in node.routes]}
        return {"lab": self.name, "up": self.is_up(), "source": self.topology.source,
                "record": str(self.record_path), "nodes": nodes,
                "links": [{"a": str(link.a), "b": str(link.b), "mtu": link.mtu}
                          for link in self.topology.links]}

    # -- steps of up() --------------------------------------------------------

    def _write_record(self) -> None:
        """Record the lab before creating anything, so a crash mid-way can be cleaned up."""
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"lab": self.name, "source": self.topology.source,
                                   "namespaces": self.namespaces(), "pid": os.getpid(),
                                   "topology": self.topology.text}, indent=2))
        tmp.replace(self.record_path)

    def _ip(self, node: str, args: list[str], what: str) -> None:
        """Run ``ip ARGS`` in ``node``; failures name the lab and the topology item."""
        try:
            netns.run(self.ns(node), ["ip", *args])
        except KernelError as e:
            raise type(e)(f"lab {self.name!r}: {what}: {e.message}", err=e.errno,
                          hint=e.hint or f"check {self.topology.source}; the lab was "
                                         "removed again") from e

    def _make_node(self, node: Node) -> None:
        ns = self.ns(node.name)
        netns.create(ns)
        # DAD off: addresses are usable at once instead of after a second or so.
        settings = {"net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"}
        if node.forward:
            settings.update({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
        with netns.enter(ns):
            for key, value in settings.items():
                try:
                    Path("/proc/sys", key).write_text(value)
                except OSError as e:
                    raise KernelError(f"lab {self.name!r}: set {key} in {ns!r}: {e.strerror}",
                                      err=e.errno or 0) from e

    def _wait_carrier(self) -> None:
        """Wait for every interface's carrier, so the lab is usable when up() returns."""
        for node in self.topology.nodes:
            with netns.enter(self.ns(node)):
                for end in self.topology.endpoints(node):
                    try:
                        iface.wait_up(end.ifname, CARRIER_TIMEOUT)
                    except KernelError as e:
                        raise KernelError(f"lab {self.name!r}: {node}: {e.message}",
                                          hint="check `dmesg`; the lab was removed again") from e

    def _make_link(self, link: Link) -> None:
        a, b = link.a, link.b
        peer = ["name", b.ifname]
        if b.node != a.node:
            peer += ["netns", self.ns(b.node)]
        self._ip(a.node, ["link", "add", a.ifname, "type", "veth", "peer", *peer],
                 f"link {a} <-> {b}")
        for end in (a, b):
            if link.mtu is not None:
                self._ip(end.node, ["link", "set", end.ifname, "mtu", str(link.mtu)],
                         f"mtu {link.mtu} on {end}")
            for addr in end.addrs:
                extra = ["nodad"] if addr.version == 6 else []
                self._ip(end.node, ["addr", "add", str(addr), "dev", end.ifname, *extra],
                         f"address {addr} on {end}")
            self._ip(end.node, ["link", "set", end.ifname, "up"], f"bring up {end}")


__all__ = ["DEFAULT_LAB", "DEFAULT_TOPOLOGY", "Endpoint", "Lab", "Link", "Node", "Route",
           "Topology"]
