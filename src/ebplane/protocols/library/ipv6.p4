// IPv6 (RFC 8200) and its extension headers: hop-by-hop options (0), routing
// (43), destination options (60) and fragment (44).  The chain is walked with
// header stacks, so it is bounded: at most four option/routing headers and one
// fragment header (more overflow the stack and the packet is rejected).
// info.l4_proto follows the chain and ends as the transport protocol.  GRE (47)
// is parsed here too (GRE over IPv6, RFC 7676).
#include <core.p4>

header ipv6_t {
    bit<4>   version;
    bit<8>   trafficClass;
    bit<20>  flowLabel;
    bit<16>  payloadLen;
    bit<8>   nextHdr;
    bit<8>   hopLimit;
    bit<128> srcAddr;
    bit<128> dstAddr;
}

// The common start of hop-by-hop, routing and destination options headers;
// the rest, (hdrExtLen + 1) * 8 bytes in all, is skipped.
header ipv6_ext_t {
    bit<8> nextHdr;
    bit<8> hdrExtLen;
}

header ipv6_frag_t {
    bit<8>  nextHdr;
    bit<8>  reserved;
    bit<13> fragOffset;
    bit<2>  res;
    bit<1>  more;
    bit<32> ident;
}

struct headers_t {
    ipv6_t ipv6;
    ipv6_ext_t[4] ipv6_ext;
    ipv6_frag_t[1] ipv6_frag;
}

struct parse_info_t {
    bit<8> l4_proto;
    bit<1> later_fragment;
}

parser Ipv6Parser(packet_in pkt, out headers_t hdr, inout parse_info_t info) {
    state parse_ipv6 {
        pkt.extract(hdr.ipv6);
        info.l4_proto = hdr.ipv6.nextHdr;
        transition select(hdr.ipv6.version) {
            6: parse_ipv6_next;
            default: reject;
        }
    }

    state parse_ipv6_next {
        transition select(info.l4_proto) {
            0: parse_ipv6_ext;
            43: parse_ipv6_ext;
            60: parse_ipv6_ext;
            44: parse_ipv6_frag;
            6: parse_tcp;
            17: parse_udp;
            58: parse_icmpv6;
            47: parse_gre;
            default: accept;
        }
    }

    state parse_ipv6_ext {
        pkt.extract(hdr.ipv6_ext.next);
        pkt.advance((bit<32>)hdr.ipv6_ext.last.hdrExtLen * 64 + 48);
        info.l4_proto = hdr.ipv6_ext.last.nextHdr;
        transition parse_ipv6_next;
    }

    state parse_ipv6_frag {
        pkt.extract(hdr.ipv6_frag.next);
        info.l4_proto = hdr.ipv6_frag.last.nextHdr;
        transition select(hdr.ipv6_frag.last.fragOffset) {
            0: parse_ipv6_next;
            default: ipv6_later_fragment;
        }
    }

    state ipv6_later_fragment {
        info.later_fragment = 1;
        transition accept;
    }
}
