"""ebplane: a programmable network data plane built from eBPF building blocks.

Layers, bottom up (each package only imports from the ones before it; docs/architecture.md
has the table that tests/test_architecture.py checks):

- ``ebplane.errors``     one exception hierarchy
- ``ebplane.protocols``  protocols in a P4-16 subset -> parse graph IR
- ``ebplane.spec``       YAML pipeline specs: load, validate, typed model
- ``ebplane.codegen``    IR + spec -> restricted C (``*.bpf.c``)
- ``ebplane.toolchain``  clang -> BPF ELF, content-hash cache
- ``ebplane.kernel``     libbpf (ctypes): object specs, objects, programs, maps, links, FDs
- ``ebplane.net``        network namespaces, interfaces, netdev features, attach XDP/TC
- ``ebplane.runtime``    the control plane: apply/detach pipelines, rules, stats, replay
- ``ebplane.xsk``        AF_XDP sockets
- ``ebplane.lab``        namespaces joined by veth pairs, traffic, the demo
- ``ebplane.bench``      measurements (``ebplane bench``)
- ``ebplane.cli``        the ``ebplane`` command
"""

__version__ = "0.1.0"
