"""Stage kinds, one package each: the spec side, the code generator, the reviewed C header
and the control-plane side of a kind live together (``filter`` first)."""
