// VXLAN (RFC 7348) on UDP port 4789.  The I flag (0x08) must be set; the
// encapsulated Ethernet frame is payload.
#include <core.p4>

header vxlan_t {
    bit<8>  flags;
    bit<24> reserved;
    bit<24> vni;
    bit<8>  reserved2;
}

struct headers_t {
    vxlan_t vxlan;
}

parser VxlanParser(packet_in pkt, out headers_t hdr) {
    state parse_vxlan {
        pkt.extract(hdr.vxlan);
        transition select(hdr.vxlan.flags) {
            0x08 &&& 0x08: accept;
            default: reject;
        }
    }
}
