"""The multicast stage kind: frames to a group address go to every member port of the group
but the ingress (one DEVMAP_HASH per group, devmap broadcast; see multicast.h)."""
