// ICMP for IPv4 (RFC 792): type, code, checksum and the 4-byte rest of header
// (identifier and sequence number for echo).
#include <core.p4>

header icmp_t {
    bit<8>  type;
    bit<8>  code;
    bit<16> checksum;
    bit<32> restOfHeader;
}

struct headers_t {
    icmp_t icmp;
}

parser IcmpParser(packet_in pkt, out headers_t hdr) {
    state parse_icmp {
        pkt.extract(hdr.icmp);
        transition accept;
    }
}
