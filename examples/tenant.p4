// A tenant tag carried after UDP destination port 4789 (in place of VXLAN).
// The hook adds "4789: parse_tenant" to the library's parse_udp without editing it.
#include <core.p4>

header tenant_t {
    bit<4>  version;
    bit<4>  flags;
    bit<24> id;       // the tenant
    bit<16> app;      // application class inside the tenant
    bit<16> reserved;
}

struct headers_t {
    tenant_t tenant;
}

parser TenantParser(packet_in pkt, out headers_t hdr) {
    @ebplane_reach("parse_udp", 4789)
    state parse_tenant {
        pkt.extract(hdr.tenant);
        transition select(hdr.tenant.version) {
            1: accept;
            default: reject;   // an unknown version is malformed
        }
    }
}
