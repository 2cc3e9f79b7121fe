"""The shipped protocol library and users' protocol files.

The library is ``library/*.p4`` inside the package, one file per protocol, the
protocol named after the file.  A user's file is checked against the library as
soon as it is loaded, so that a typo in a state it hooks into is reported at
load time, pointing into the user's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ebplane.errors import SpecError
from ebplane.protocols.frontend import ProtocolModule, module_name, parse_module
from ebplane.protocols.source import render


@dataclass(frozen=True)
class ProtocolLibrary:
    """All shipped protocols, by name, in a canonical order (outer headers first)."""

    modules: dict[str, ProtocolModule]

    def names(self) -> list[str]:
        return list(self.modules)

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    def __getitem__(self, name: str) -> ProtocolModule:
        if name not in self.modules:
            raise SpecError(f"unknown protocol '{name}'", given=name,
                            allowed=", ".join(self.modules),
                            hint="use a library protocol or the path of a .p4 file")
        return self.modules[name]

    def state_owner(self) -> dict[str, str]:
        """State name -> name of the protocol declaring it."""
        return {s: m.name for m in self.modules.values() for s in m.states}


# The canonical order; the files themselves are the truth about which protocols exist.
_ORDER = ("ethernet", "vlan", "mpls", "arp", "ipv4", "ipv6", "icmp", "icmpv6", "tcp", "udp",
          "gre", "vxlan", "geneve", "gtpu")


@cache
def load_library() -> ProtocolLibrary:
    """Parse and cross-check every shipped protocol (cached: the files do not change)."""
    folder = resources.files("ebplane.protocols").joinpath("library")
    files = {Path(f.name).stem: f for f in folder.iterdir() if f.name.endswith(".p4")}
    order = [n for n in _ORDER if n in files] + sorted(set(files) - set(_ORDER))
    modules: dict[str, ProtocolModule] = {}
    for name in order:
        path = f"ebplane/protocols/library/{name}.p4"
        modules[name] = parse_module(name, path, files[name].read_text())
    lib = ProtocolLibrary(modules)
    owners: dict[str, str] = {}
    for m in modules.values():
        _check_against(m, lib, owners)
        owners.update(dict.fromkeys(m.states, m.name))
    return lib


def load_protocol_file(path: str | Path) -> ProtocolModule:
    """Parse a user's protocol file and check that what it names in the library exists."""
    from ebplane.protocols.files import read_source
    p = Path(path)
    text = read_source(p, "protocol file")
    lib = load_library()
    name = module_name(p)
    if name in lib:
        raise SpecError(f"protocol file '{p.name}' has the name of library protocol '{name}'",
                        file=str(p), hint="rename the file; a protocol is named after its file")
    module = parse_module(name, str(p), text)
    _check_against(module, lib, lib.state_owner())
    return module


def _check_against(module: ProtocolModule, lib: ProtocolLibrary, owners: dict[str, str]) -> None:
    """``module``'s state names are new, and the states it names elsewhere exist."""
    known = lib.state_owner()
    for state in module.states.values():
        if state.name in owners and owners[state.name] != module.name:
            raise render(state.loc, f"state '{state.name}' is already declared by protocol "
                                    f"'{owners[state.name]}'",
                         hint="state names are shared by all protocols: prefix yours with the "
                              "protocol's name")
    for target, loc in module.external_targets.items():
        if target not in known:
            raise render(loc, f"unknown state '{target}'",
                         hint="a transition goes to a state of this file, accept, reject, or the "
                              "entry state of a library protocol (parse_<protocol>)")
    for hook in module.hooks:
        if hook.parent not in known:
            raise render(hook.loc, f"unknown parent state '{hook.parent}'",
                         hint="name a library state, e.g. parse_udp")
