// MPLS label stack (RFC 3032), up to four labels.  After the bottom of stack
// the payload has no type field: its first nibble tells IPv4 (4) from IPv6 (6).
#include <core.p4>

header mpls_t {
    bit<20> label;
    bit<3>  tc;
    bit<1>  bos;
    bit<8>  ttl;
}

struct headers_t {
    mpls_t[4] mpls;
}

parser MplsParser(packet_in pkt, out headers_t hdr) {
    state parse_mpls {
        pkt.extract(hdr.mpls.next);
        transition select(hdr.mpls.last.bos) {
            0: parse_mpls;
            1: parse_mpls_payload;
        }
    }

    state parse_mpls_payload {
        transition select(pkt.lookahead<bit<4>>()) {
            4: parse_ipv4;
            6: parse_ipv6;
            default: accept;
        }
    }
}
