"""The spec of ``mirror``: a copy of selected packets (``match:``, sampled 1 in ``sample``) to
another interface while the original goes on: at TC with ``bpf_clone_redirect``, after which
the original continues to the next stage; at XDP a program cannot clone a frame and go on,
so the original must leave by a known port (``out:``) and a devmap broadcast sends it to
both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name
from ebplane.stages.forward.spec import XskMatch, _ifname, _xsk_match

MIRROR_SAMPLE_MAX = 1 << 24


@dataclass(frozen=True)
class MirrorStage(Stage):
    """A copy of each selected packet (any ``match`` entry; none: all), 1 in ``sample``,
    goes out of ``to``; the original goes on.  At XDP the original must leave by ``out``
    (both are sent by one devmap broadcast); at TC it goes on to the next stage."""

    kind: ClassVar[str] = "mirror"
    to: str = ""
    sample: int = 1
    match: tuple[XskMatch, ...] = ()
    out: str | None = None

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "to": self.to, "sample": self.sample,
                             "match": [m.to_dict() for m in self.match]}
        if self.out:
            d["out"] = self.out
        return d

    def check_hook(self, hook: str, where: Where) -> None:
        if hook == "xdp" and self.out is None:
            raise where.error(
                "mirror at hook xdp needs out: (the port the original leaves by): XDP cannot clone "
                "a frame and let the original go on, so one devmap broadcast sends it to out: "
                "and to to:", key=True,
                hint="add out: IFNAME, or mirror at TC (hook: tc-ingress or tc-egress), where "
                     "bpf_clone_redirect copies the packet and the original goes on")
        if hook != "xdp" and self.out is not None:
            raise (where / "out").error("out: is for hook xdp only; at TC the original goes on "
                                        "to the next stage", given=self.out, key=True,
                                        hint="remove out: (follow the mirror with the stage that "
                                             "forwards the original)")


def parse_mirror(obj: Any, where: Where, protocols: tuple[str, ...]) -> MirrorStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "to", "sample", "match", "out"), required=("to",))
    raw = check.sequence(body.get("match", []), where / "match", what="a list of match entries")
    to = _ifname(body["to"], where / "to")
    out = _ifname(body["out"], where / "out") if "out" in body else None
    if out is not None and out == to:
        raise (where / "out").error("out: and to: name the same interface", given=out,
                                    hint="out: is where the original leaves, to: the copy")
    return MirrorStage(name=stage_name(body, where, "mirror"), to=to,
                       sample=check.integer(body.get("sample", 1), where / "sample", 1,
                                            MIRROR_SAMPLE_MAX, what="1-in-N sampling rate"),
                       match=tuple(_xsk_match(m, where / "match" / i, protocols)
                                   for i, m in enumerate(raw)),
                       out=out)


PARSERS = {"mirror": parse_mirror}
