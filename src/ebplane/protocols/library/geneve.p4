// Geneve (RFC 8926) on UDP port 6081.  Options (optLen 4-byte words) are
// skipped; the encapsulated packet is payload.
#include <core.p4>

header geneve_t {
    bit<2>  version;
    bit<6>  optLen;
    bit<1>  oam;
    bit<1>  critical;
    bit<6>  reserved;
    bit<16> protocol;
    bit<24> vni;
    bit<8>  reserved2;
}

struct headers_t {
    geneve_t geneve;
}

parser GeneveParser(packet_in pkt, out headers_t hdr) {
    state parse_geneve {
        pkt.extract(hdr.geneve);
        transition select(hdr.geneve.version, hdr.geneve.optLen) {
            (0, 0): accept;
            (0, _): parse_geneve_options;
            default: reject;
        }
    }

    state parse_geneve_options {
        pkt.advance((bit<32>)hdr.geneve.optLen * 32);
        transition accept;
    }
}
