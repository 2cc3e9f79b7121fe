"""ebplane: a programmable network data plane built from eBPF building blocks.

Layers, bottom up (each package only imports from the ones before it):

- ``ebplane.errors``     one exception hierarchy
- ``ebplane.spec``       YAML pipeline specs: load, validate, typed model
- ``ebplane.protocols``  protocols in a P4-16 subset -> parse graph IR
- ``ebplane.codegen``    IR + spec -> restricted C (``*.bpf.c``)
- ``ebplane.toolchain``  clang -> BPF ELF, content-hash cache
- ``ebplane.kernel``     libbpf (ctypes): objects, programs, maps, links, test_run, ringbuf, probe
- ``ebplane.net``        network namespaces, interfaces, netdev features, attach XDP/TC
- ``ebplane.runtime``    the control plane: apply/detach pipelines, rules, stats
- ``ebplane.lab``        namespaces joined by veth pairs, traffic, the demo
- ``ebplane.cli``        the ``ebplane`` command
"""

__version__ = "0.1.0"
