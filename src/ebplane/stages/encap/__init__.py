"""The encap and decap stage kinds: VLAN tags and tunnels (VXLAN, GENEVE, GRE, IPIP) pushed
and popped, and users' P4 headers removed (see encap.h, docs/forwarding.md)."""
KINDS = ("decap", "encap")
