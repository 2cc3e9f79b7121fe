"""YAML pipeline specs: load, validate, typed model.

``load_spec(path)`` / ``parse_spec(text)`` validate a whole spec before anything
else happens; ``parse_rule(obj, protocols=...)`` validates one filter rule (for
run-time edits).  Every problem is a located :class:`ebplane.errors.SpecError`.
"""

from ebplane.spec.pipeline import HOOKS, XDP_MODES, PipelineSpec, load_spec, parse_spec
from ebplane.spec.protocol_set import KNOWN_PROTOCOLS, canonical_order
from ebplane.spec.rules import ACTIONS, PROTO_NAMES, PROTO_NUMBERS, Rule, parse_rule
from ebplane.spec.stages import STAGE_KINDS, CountStage, FilterStage, Stage, register_stage
from ebplane.spec import forwarding  # noqa: F401,E402  (registers the forwarding stage kinds)
from ebplane.spec import l4  # noqa: F401,E402  (registers conntrack)
from ebplane.spec import nat  # noqa: F401,E402  (registers nat)

__all__ = [
    "ACTIONS", "HOOKS", "KNOWN_PROTOCOLS", "PROTO_NAMES", "PROTO_NUMBERS", "STAGE_KINDS",
    "XDP_MODES", "CountStage", "FilterStage", "PipelineSpec", "Rule", "Stage", "canonical_order",
    "load_spec", "parse_rule", "parse_spec", "register_stage",
]
