// ARP for IPv4 over Ethernet (RFC 826): hardware type 1, protocol 0x0800.
#include <core.p4>

header arp_t {
    bit<16> htype;
    bit<16> ptype;
    bit<8>  hlen;
    bit<8>  plen;
    bit<16> oper;
    bit<48> sha;
    bit<32> spa;
    bit<48> tha;
    bit<32> tpa;
}

struct headers_t {
    arp_t arp;
}

parser ArpParser(packet_in pkt, out headers_t hdr) {
    state parse_arp {
        pkt.extract(hdr.arp);
        transition accept;
    }
}
