// GTP-U (3GPP TS 29.281) on UDP port 2152.  When any of the E, S or PN flags
// is set, the sequence number, N-PDU number and next extension type follow.
// Extension headers and the user packet are payload.
#include <core.p4>

header gtpu_t {
    bit<3>  version;
    bit<1>  pt;
    bit<1>  spare;
    bit<1>  e;
    bit<1>  s;
    bit<1>  pn;
    bit<8>  msgType;
    bit<16> length;
    bit<32> teid;
}

header gtpu_opt_t {
    bit<16> seqNo;
    bit<8>  npdu;
    bit<8>  nextExtType;
}

struct headers_t {
    gtpu_t gtpu;
    gtpu_opt_t gtpu_opt;
}

parser GtpuParser(packet_in pkt, out headers_t hdr) {
    state parse_gtpu {
        pkt.extract(hdr.gtpu);
        transition select(hdr.gtpu.version, hdr.gtpu.e, hdr.gtpu.s, hdr.gtpu.pn) {
            (1, 0, 0, 0): accept;
            (1, _, _, _): parse_gtpu_opt;
            default: reject;
        }
    }

    state parse_gtpu_opt {
        pkt.extract(hdr.gtpu_opt);
        transition accept;
    }
}
