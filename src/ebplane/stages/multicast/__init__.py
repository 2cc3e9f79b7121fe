"""The multicast stage kind: frames to a group address go to every member port of the group
but the ingress (one DEVMAP_HASH per group, devmap broadcast; see multicast.h).  ``spec``
holds the model, ``gen`` the C, map names and layouts, ``control`` the groups in the kernel's
maps; run-time changes and snooping are ``ebplane.runtime.groups``."""

KINDS = ("multicast",)  # the spec keywords this package implements
