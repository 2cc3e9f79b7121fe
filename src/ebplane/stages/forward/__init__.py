"""The forwarding stage kinds (route, bridge, redirect, tx, steer, xsk): one package because
they share their reviewed C (``forward.h``).  ``spec`` holds their models, ``gen`` their
generators (map names, counter slots), ``control`` fills their redirect maps and checks
that redirected frames can leave."""

KINDS = ("route", "bridge", "redirect", "tx", "steer", "xsk")  # the spec keywords this package implements
