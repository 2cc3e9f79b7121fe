// GRE (RFC 2784, with the key and sequence number of RFC 2890).  Each optional
// word is extracted when its flag is set.  The encapsulated packet is payload.
#include <core.p4>

header gre_t {
    bit<1>  C;
    bit<1>  R;
    bit<1>  K;
    bit<1>  S;
    bit<9>  reserved0;
    bit<3>  version;
    bit<16> protocol;
}

header gre_checksum_t {
    bit<16> checksum;
    bit<16> reserved1;
}

header gre_key_t {
    bit<32> key;
}

header gre_seq_t {
    bit<32> seqNo;
}

struct headers_t {
    gre_t gre;
    gre_checksum_t gre_checksum;
    gre_key_t gre_key;
    gre_seq_t gre_seq;
}

parser GreParser(packet_in pkt, out headers_t hdr) {
    state parse_gre {
        pkt.extract(hdr.gre);
        transition select(hdr.gre.C, hdr.gre.K, hdr.gre.S) {
            (1, _, _): parse_gre_checksum;
            (0, 1, _): parse_gre_key;
            (0, 0, 1): parse_gre_seq;
            default: accept;
        }
    }

    state parse_gre_checksum {
        pkt.extract(hdr.gre_checksum);
        transition select(hdr.gre.K, hdr.gre.S) {
            (1, _): parse_gre_key;
            (0, 1): parse_gre_seq;
            default: accept;
        }
    }

    state parse_gre_key {
        pkt.extract(hdr.gre_key);
        transition select(hdr.gre.S) {
            1: parse_gre_seq;
            default: accept;
        }
    }

    state parse_gre_seq {
        pkt.extract(hdr.gre_seq);
        transition accept;
    }
}
