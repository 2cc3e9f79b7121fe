// TCP (RFC 9293).  Options are skipped by the data offset.
#include <core.p4>

header tcp_t {
    bit<16> srcPort;
    bit<16> dstPort;
    bit<32> seqNo;
    bit<32> ackNo;
    bit<4>  dataOffset;
    bit<4>  res;
    bit<8>  flags;      // CWR ECE URG ACK PSH RST SYN FIN
    bit<16> window;
    bit<16> checksum;
    bit<16> urgentPtr;
}

struct headers_t {
    tcp_t tcp;
}

parser TcpParser(packet_in pkt, out headers_t hdr) {
    state parse_tcp {
        pkt.extract(hdr.tcp);
        transition select(hdr.tcp.dataOffset) {
            0 .. 4: reject;
            5: accept;
            default: parse_tcp_options;
        }
    }

    state parse_tcp_options {
        pkt.advance(((bit<32>)hdr.tcp.dataOffset - 5) * 32);
        transition accept;
    }
}
