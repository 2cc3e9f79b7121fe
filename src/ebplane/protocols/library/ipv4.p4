// IPv4 (RFC 791).  Options are skipped by the header length (ihl); a header
// length below 5 words is malformed.  A fragment other than the first carries
// no transport header: parsing stops with info.later_fragment = 1.
#include <core.p4>

const bit<8> IPPROTO_ICMP = 1;
const bit<8> IPPROTO_TCP = 6;
const bit<8> IPPROTO_UDP = 17;
const bit<8> IPPROTO_GRE = 47;

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<6>  dscp;
    bit<2>  ecn;
    bit<16> totalLen;
    bit<16> identification;
    bit<3>  flags;
    bit<13> fragOffset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdrChecksum;
    bit<32> srcAddr;
    bit<32> dstAddr;
}

struct headers_t {
    ipv4_t ipv4;
}

struct parse_info_t {
    bit<8> l4_proto;        // IP protocol of the transport header
    bit<1> later_fragment;  // a non-first fragment: no transport header
}

parser Ipv4Parser(packet_in pkt, out headers_t hdr, inout parse_info_t info) {
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        info.l4_proto = hdr.ipv4.protocol;
        transition select(hdr.ipv4.version, hdr.ipv4.ihl) {
            (4, 0 .. 4): reject;
            (4, 5): parse_ipv4_payload;
            (4, _): parse_ipv4_options;
            default: reject;
        }
    }

    state parse_ipv4_options {
        pkt.advance(((bit<32>)hdr.ipv4.ihl - 5) * 32);
        transition parse_ipv4_payload;
    }

    state parse_ipv4_payload {
        transition select(hdr.ipv4.fragOffset, hdr.ipv4.protocol) {
            (0, IPPROTO_TCP): parse_tcp;
            (0, IPPROTO_UDP): parse_udp;
            (0, IPPROTO_ICMP): parse_icmp;
            (0, IPPROTO_GRE): parse_gre;
            (0, _): accept;
            default: ipv4_later_fragment;
        }
    }

    state ipv4_later_fragment {
        info.later_fragment = 1;
        transition accept;
    }
}
