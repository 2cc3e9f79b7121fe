"""The balancer stage kind: an L4 load balancer for virtual IPs in XDP (see balancer.h):
Maglev consistent hashing, a connection table, IPIP/GUE encapsulation for direct server
return, backends changed at run time (:mod:`ebplane.stages.balancer.control`)."""

KINDS = ("balancer",)  # the spec keywords this package implements
