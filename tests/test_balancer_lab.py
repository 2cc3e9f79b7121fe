"""The balancer with real TCP connections: a client, a dut running the balancer in XDP on
its one interface (XDP_TX back onto the segment), and four backends that decapsulate and
answer the client directly from the VIP (direct server return), all on one bridged segment.

Decapsulation: with the kernel's own ipip device (and a fou port for GUE) where the kernel
has them; this test machine's kernel has neither (CONFIG_NET_IPIP and CONFIG_NET_FOU are
not set, no modules), so there a TC program (tests/bpf/lb_decap.bpf.c) strips the outer
headers with bpf_skb_adjust_room and the kernel's stack takes the inner packet.

  client 198.18.2.2   2001:db8:2::2 --+
  dut    198.18.2.1   2001:db8:2::1 --+-- br0 (namespace of its own)
  b1..b4 198.18.2.11-14, 2001:db8:2::11-14 (VIPs 198.18.10.1, 2001:db8:10::1 on lo) --+
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env, write_spec  # noqa: F401  (fixture)
from ebplane.kernel.programs import BpfObject
from ebplane.net import attach, netns
from ebplane.runtime import pipeline
from ebplane.runtime.balancer import Backends
from ebplane.stages.balancer import maglev

PORT = 80
# the segment is dual-stack; a test uses one family's VIP and backends
NETS = {
    4: {"vip": "198.18.10.1", "client": "198.18.2.2", "dut": "198.18.2.1",
        "backends": [f"198.18.2.{11 + i}" for i in range(4)], "plen": 24, "host": 32},
    6: {"vip": "2001:db8:10::1", "client": "2001:db8:2::2", "dut": "2001:db8:2::1",
        "backends": [f"2001:db8:2::{11 + i}" for i in range(4)], "plen": 64, "host": 128},
}

SPEC = """\
pipeline: lblab
hook: xdp
netns: {dut}
interfaces: [eth0]
protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - balancer:
      name: lb
      encap: {encap}
      source: {{ipv4: {src4}, ipv6: "{src6}"}}
      table_size: 65537
      vips:
        - vip: "{vip}"
          port: {port}
          proto: tcp
          backends: [{backends}]
"""


DECAP = Path(__file__).parent / "bpf" / "lb_decap.bpf.c"
XDP_PASS = """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int port_pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def kernel_tunnels() -> bool:
    """Whether this kernel can make ipip and fou devices (built in: no modules here)."""
    try:
        import gzip
        cfg = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        return os.path.exists("/sys/module/ipip")
    return "CONFIG_NET_IPIP=y" in cfg and "CONFIG_NET_FOU=y" in cfg


def sh(ns: str, *cmds: str) -> None:
    for c in cmds:
        netns.run(ns, c.split())


@contextlib.contextmanager
def segment(encap: str):
    """The namespaces: switch, client, dut, four backends; removed afterwards."""
    with contextlib.ExitStack() as stack:
        sw = stack.enter_context(netns.temporary("ebp-lbs")).name
        names = {"client": stack.enter_context(netns.temporary("ebp-lbc")).name,
                 "dut": stack.enter_context(netns.temporary("ebp-lbd")).name}
        for i in range(4):
            names[f"b{i}"] = stack.enter_context(netns.temporary("ebp-lbb")).name
        sh(sw, "ip link add br0 type bridge", "ip link set br0 up")
        addrs = {f: {"client": n["client"], "dut": n["dut"],
                     **{f"b{i}": a for i, a in enumerate(n["backends"])}}
                 for f, n in NETS.items()}
        for j, (node, ns) in enumerate(names.items()):
            sh(sw, f"ip link add p{j} type veth peer name eth0 netns {ns}",
               f"ip link set p{j} master br0", f"ip link set p{j} up")
            sh(ns, f"ip addr add {addrs[4][node]}/24 dev eth0",
               f"ip addr add {addrs[6][node]}/64 dev eth0 nodad", "ip link set eth0 up")
        # the dut's XDP_TX frames reach the bridge only if its port runs NAPI for them: an
        # XDP program there (GRO on is not enough on this kernel: the frames vanish)
        from ebplane.toolchain.clang import compile_c
        xpass = BpfObject.open_bytes(compile_c(XDP_PASS, name="lb_port_pass").elf,
                                     "lb_port_pass").load()
        stack.callback(xpass.close)
        with netns.enter(sw):
            link = attach.attach_xdp(xpass.programs["port_pass"].fd, "p1", mode="native").link
        stack.callback(link.close)
        for n in NETS.values():
            sh(names["client"], f"ip route add {n['vip']}/{n['host']} via {n['dut']}")
        sh(names["dut"], "sysctl -qw net.ipv4.conf.all.forwarding=1",
           "sysctl -qw net.ipv4.conf.eth0.forwarding=1",
           "sysctl -qw net.ipv6.conf.all.forwarding=1")
        # frames on a wire carry whole checksums (veth would hand the dut partial ones)
        sh(names["client"], "ethtool -K eth0 tx off")
        objs = []
        for i in range(4):
            b = names[f"b{i}"]
            sh(b, f"ip addr add {NETS[4]['vip']}/32 dev lo",
               f"ip addr add {NETS[6]['vip']}/128 dev lo nodad",
               "sysctl -qw net.ipv4.conf.all.rp_filter=0",
               "sysctl -qw net.ipv4.conf.eth0.rp_filter=0")
            if kernel_tunnels():
                sh(b, f"ip link add lbt0 type ipip local {NETS[4]['backends'][i]} remote any",
                   "ip link set lbt0 up", "sysctl -qw net.ipv4.conf.lbt0.rp_filter=0",
                   f"ip link add lbt6 type ip6tnl mode any local {NETS[6]['backends'][i]} "
                   "remote any", "ip link set lbt6 up")
                if encap == "gue":
                    sh(b, "ip fou add port 6080 gue", "ip fou add port 6080 gue -6")
            else:
                from ebplane.toolchain.clang import compile_file
                obj = BpfObject.open_bytes(compile_file(DECAP).elf, "lb_decap").load()
                stack.callback(obj.close)
                with netns.enter(b):
                    att = attach.attach_tc(obj.programs["lb_decap"].fd, "eth0", "ingress")
                objs.append(att)
                if att.link is not None:
                    stack.callback(att.link.close)
        yield names


class Backend:
    """A TCP server on VIP:80 inside a backend's namespace: greets with its name, then
    echoes; ``big`` bytes sent on request (``B``)."""

    def __init__(self, ns: str, name: str, vip: str):
        self.name = name
        self.vip = vip
        self.ready = threading.Event()
        self.stop = False
        self.conns = 0
        self.thread = threading.Thread(target=self._serve, args=(ns,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self, ns: str) -> None:
        with netns.enter(ns):
            srv = socket.socket(socket.AF_INET6 if ":" in self.vip else socket.AF_INET)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((self.vip, PORT))
            srv.listen(512)
            srv.settimeout(0.2)
        self.ready.set()
        with srv:
            while not self.stop:
                try:
                    c, _ = srv.accept()
                except socket.timeout:
                    continue
                self.conns += 1
                threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c: socket.socket) -> None:
        with c:
            try:
                c.sendall(self.name.encode().ljust(16))
                while True:
                    d = c.recv(65536)
                    if not d:
                        return
                    if d == b"B":
                        c.sendall(b"x" * 1_000_000)
                    else:
                        c.sendall(d)
            except OSError:
                return


def connect(client_ns: str, n: int, vip: str,
            timeout: float = 5.0) -> list[tuple[socket.socket, int, str]]:
    """``n`` connections from the client to the VIP: (socket, source port, backend)."""
    out = []
    with netns.enter(client_ns):
        for _ in range(n):
            s = socket.create_connection((vip, PORT), timeout=timeout)
            out.append(s)
    res = []
    for s in out:
        name = b""
        while len(name) < 16:
            d = s.recv(16 - len(name))
            if not d:
                break
            name += d
        res.append((s, s.getsockname()[1], name.decode().strip()))
    return res


def still_there(s: socket.socket, backend: str) -> bool:
    """Whether the connection still reaches its backend (echo of a message naming it)."""
    msg = f"ping {backend}".encode()
    try:
        s.settimeout(2.0)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(len(msg) - len(got))
            if not d:
                return False
            got += d
        return got == msg
    except OSError:
        return False


def rx_bytes(ns: str, dev: str = "eth0") -> int:
    with netns.enter(ns):
        return int(open(f"/sys/class/net/{dev}/statistics/rx_bytes").read())


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("encap,family", [("ipip", 4), ("gue", 4), ("ipip", 6), ("gue", 6)])
def test_balancer_with_real_tcp_connections(ebp_env, tmp_path, encap, family):
    net = NETS[family]
    VIP, CLIENT, BACKENDS = net["vip"], net["client"], net["backends"]
    with segment(encap) as ns:
        servers = [Backend(ns[f"b{i}"], BACKENDS[i], VIP) for i in range(4)]
        # three backends at first; the fourth is added under traffic
        spec = write_spec(tmp_path / "lb.yaml", SPEC.format(
            dut=ns["dut"], encap=encap, src4=NETS[4]["dut"], src6=NETS[6]["dut"], vip=VIP,
            port=PORT,
            backends=", ".join(BACKENDS[:3])))
        pipeline.apply(spec)
        conns: list = []
        try:
            be = Backends("lblab")
            conns = connect(ns["client"], 60, VIP)
            # each connection reached the backend Maglev gives its flow
            M = 65537
            table = maglev.populate([(i, a, 1) for i, a in enumerate(BACKENDS[:3])], M)
            for s, sport, got in conns:
                want = BACKENDS[table[maglev.flow_hash(CLIENT, sport, PORT, 6) % M]]
                assert got == want, (sport, got, want)
            assert {b for _, _, b in conns} == set(BACKENDS[:3])
            # the backends answer directly: a 1 MB answer does not pass the dut
            s0 = conns[0][0]
            before = rx_bytes(ns["dut"])
            s0.sendall(b"B")
            s0.settimeout(5.0)
            got = 0
            while got < 1_000_000:
                d = s0.recv(65536)
                assert d, "connection closed"
                got += len(d)
            assert rx_bytes(ns["dut"]) - before < 200_000
            # full-size segments do not fit once encapsulated: the balancer answers ICMP
            # "fragmentation needed" from the VIP and the client's path-MTU discovery copes
            big = bytes(range(256)) * 200
            s0.sendall(big)
            echo = b""
            while len(echo) < len(big):
                d = s0.recv(65536)
                assert d, "connection closed"
                echo += d
            assert echo == big
            st = next(s for s in pipeline.stats("lblab")[0]["stages"] if s["kind"] == "balancer")
            assert st["counts"]["too_big_answered"]["packets"] >= 1
            # adding a backend: established connections survive
            res = be.add(BACKENDS[3])
            assert 0 < res["moved"] < M * 0.3
            assert all(still_there(s, b) for s, _, b in conns)
            fresh = connect(ns["client"], 60, VIP)
            assert BACKENDS[3] in {b for _, _, b in fresh}
            conns += fresh
            # removing a backend moves exactly its connections (they break: another
            # backend answers them with a reset); the others stay
            victim = BACKENDS[1]
            be.remove(victim)
            alive = {id(s): still_there(s, b) for s, _, b in conns}
            broken = {id(s) for s, _, b in conns if not alive[id(s)]}
            on_victim = {id(s) for s, _, b in conns if b == victim}
            assert on_victim and broken == on_victim
            # new connections never reach it; a backend marked down gets none either
            be.down(BACKENDS[2])
            later = connect(ns["client"], 40, VIP)
            assert {b for _, _, b in later} <= {BACKENDS[0], BACKENDS[3]}
            st = next(s for s in pipeline.stats("lblab")[0]["stages"] if s["kind"] == "balancer")
            assert st["counts"]["new"]["packets"] >= 160
            assert st["counts"]["rehashed"]["packets"] >= len(on_victim)
            conns += later
        finally:
            for s, _, _ in conns:
                s.close()
            for srv in servers:
                srv.stop = True
            pipeline.detach("lblab")
            for srv in servers:
                srv.thread.join(2)
