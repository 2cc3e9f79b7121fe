// VLAN tags: 802.1Q (0x8100) and 802.1ad QinQ (0x88a8 outer, 0x8100 inner).
// At most two tags; a third one overflows the stack and the packet is rejected.
#include <core.p4>

header vlan_t {
    bit<3>  pcp;
    bit<1>  dei;
    bit<12> vid;
    bit<16> etherType;
}

struct headers_t {
    vlan_t[2] vlan;
}

parser VlanParser(packet_in pkt, out headers_t hdr) {
    state parse_vlan {
        pkt.extract(hdr.vlan.next);
        transition select(hdr.vlan.last.etherType) {
            0x8100: parse_vlan;
            0x88a8: parse_vlan;
            0x8847: parse_mpls;
            0x8848: parse_mpls;
            0x0806: parse_arp;
            0x0800: parse_ipv4;
            0x86dd: parse_ipv6;
            default: accept;
        }
    }
}
