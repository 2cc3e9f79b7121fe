// ICMPv6 (RFC 4443): the 4-byte common header.
#include <core.p4>

header icmpv6_t {
    bit<8>  type;
    bit<8>  code;
    bit<16> checksum;
}

struct headers_t {
    icmpv6_t icmpv6;
}

parser Icmpv6Parser(packet_in pkt, out headers_t hdr) {
    state parse_icmpv6 {
        pkt.extract(hdr.icmpv6);
        transition accept;
    }
}
