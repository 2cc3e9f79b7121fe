"""The key layout under ``/ebplane/v1/`` (docs/fleet.md describes it for operators).

=====================================  ==========  =============================================
key                                    lease       value (JSON)
=====================================  ==========  =============================================
``/ebplane/v1/pipelines/<pipeline>``   none        the fleet definition: spec text, rules per
                                                   filter, selector; its mod revision is the
                                                   pipeline's *version*
``/ebplane/v1/desired/<node>/<pipe>``  none        what one node must run: the definition with
                                                   its ``version``; written node by node by a
                                                   rollout (canary first); the only prefix an
                                                   agent watches
``/ebplane/v1/nodes/<node>``           none        the node's labels (written by its agent)
``/ebplane/v1/alive/<node>``           node's      present while the agent runs and reaches etcd
``/ebplane/v1/status/<node>/<pipe>``   node's      version applied, state, attached interfaces,
                                                   error, last reconcile
=====================================  ==========  =============================================
"""

from __future__ import annotations

import re

from ebplane.errors import UsageError

ROOT = "/ebplane/v1/"
PIPELINES = ROOT + "pipelines/"
DESIRED = ROOT + "desired/"
NODES = ROOT + "nodes/"
ALIVE = ROOT + "alive/"
STATUS = ROOT + "status/"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_node(name: str) -> str:
    if not _NAME.match(name or ""):
        raise UsageError(f"bad node name {name!r}",
                         hint="letters, digits, '.', '_', '-' (at most 63), e.g. the host name")
    return name


def parse_labels(text: str | None, what: str = "--labels") -> dict[str, str]:
    """``k=v,k2=v2`` -> dict (the same syntax for labels and for selectors)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        if not eq or not _NAME.match(k.strip()) or not _NAME.match(v.strip()):
            raise UsageError(f"{what}: bad label {part!r}",
                             hint="write key=value pairs separated by commas, e.g. "
                                  "role=edge,rack=r1")
        out[k.strip()] = v.strip()
    return out


def matches(selector: dict[str, str], labels: dict[str, str], node: str) -> bool:
    """A selector matches when every pair is among the node's labels; the pseudo-label
    ``node=<name>`` selects by name."""
    have = {**labels, "node": node}
    return all(have.get(k) == v for k, v in selector.items())


def desired(node: str, pipeline: str = "") -> str:
    return f"{DESIRED}{node}/{pipeline}"


def status(node: str, pipeline: str = "") -> str:
    return f"{STATUS}{node}/{pipeline}"
