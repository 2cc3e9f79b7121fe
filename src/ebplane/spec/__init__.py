"""YAML pipeline specs: load, validate, typed model.

``load_spec(path)`` / ``parse_spec(text)`` validate a whole spec before anything
else happens; ``parse_rule(obj, protocols=...)`` validates one filter rule (for
run-time edits).  Every problem is a located :class:`ebplane.errors.SpecError`.
"""

from ebplane.spec.pipeline import HOOKS, XDP_MODES, PipelineSpec, load_spec, parse_spec
from ebplane.spec.protocol_set import KNOWN_PROTOCOLS, canonical_order
from ebplane.spec.rules import ACTIONS, PROTO_NAMES, PROTO_NUMBERS, Rule, parse_rule
from ebplane.spec.stages import STAGE_KINDS, Stage, register_stage

__all__ = [
    "ACTIONS", "HOOKS", "KNOWN_PROTOCOLS", "PROTO_NAMES", "PROTO_NUMBERS", "STAGE_KINDS",
    "XDP_MODES", "CountStage", "FilterStage", "PipelineSpec", "Rule", "Stage", "canonical_order",
    "load_spec", "parse_rule", "parse_spec", "register_stage",
]

# the models of stage kinds live in their packages (ebplane.stages.<kind>.spec); these names
# stay importable from here, loaded on first use (PEP 562)
_KIND_MODELS = {"FilterStage": "ebplane.stages.filter.spec",
                "CountStage": "ebplane.stages.count.spec"}


def __getattr__(name: str):
    if name in _KIND_MODELS:
        import importlib
        return getattr(importlib.import_module(_KIND_MODELS[name]), name)
    raise AttributeError(f"module 'ebplane.spec' has no attribute {name!r}")
