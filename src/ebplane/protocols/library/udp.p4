// UDP (RFC 768), and the tunnels found by their well-known destination port.
#include <core.p4>

const bit<16> UDP_PORT_VXLAN = 4789;
const bit<16> UDP_PORT_GENEVE = 6081;
const bit<16> UDP_PORT_GTPU = 2152;

header udp_t {
    bit<16> srcPort;
    bit<16> dstPort;
    bit<16> length;
    bit<16> checksum;
}

struct headers_t {
    udp_t udp;
}

parser UdpParser(packet_in pkt, out headers_t hdr) {
    state parse_udp {
        pkt.extract(hdr.udp);
        transition select(hdr.udp.dstPort) {
            UDP_PORT_VXLAN: parse_vxlan;
            UDP_PORT_GENEVE: parse_geneve;
            UDP_PORT_GTPU: parse_gtpu;
            default: accept;
        }
    }
}
