"""``ebplane parser show | export``: the parser a pipeline spec gets, and its P4-16 form."""

from __future__ import annotations

import sys
from pathlib import Path

from ebplane.cli.output import emit


def register(sub) -> None:
    p = sub.add_parser("parser", help="the parser generated for a pipeline spec")
    s = p.add_subparsers(dest="parser_command", metavar="COMMAND", required=True)
    show = s.add_parser("show", help="parse graph, headers loaded and skipped, parse-info layout")
    show.add_argument("spec", help="pipeline spec (YAML)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    exp = s.add_parser("export", help="the complete P4-16 parser, for other targets")
    exp.add_argument("spec", help="pipeline spec (YAML)")
    exp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    exp.set_defaults(func=cmd_export)


def _parser(spec_path: str):
    """The specialised graph and user-area layout of the spec (its rules decide the fields)."""
    from ebplane.codegen.pipeline import spec_features, spec_parser
    from ebplane.spec import load_spec
    spec = load_spec(spec_path)
    features = spec_features(spec)
    graph, user, _ = spec_parser(spec.protocols, features)
    return spec, features, graph, user


def cmd_show(args) -> int:
    spec, features, graph, user = _parser(args.spec)
    data = {"pipeline": spec.name, "mode": spec.parser_mode, "features": features.to_dict(),
            "parser": graph.to_dict(), "user_layout": user.to_dict()}

    def human(_d) -> str:
        lines = [graph.describe().rstrip(), "", f"parser mode: {spec.parser_mode}"]
        if user.fields:
            lines.append(f"user area of ebp_pkt (match: fields, {user.size} of 16 bytes):")
            lines += [f"  {f.offset:4d}  u8[{f.size}]  {f.name} (valid bit {f.bit})"
                      for f in user.fields]
        return "\n".join(lines)
    emit(args, data, human)
    return 0


def cmd_export(args) -> int:
    _, _, graph, _ = _parser(args.spec)
    text = graph.to_p4()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
