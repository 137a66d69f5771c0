"""``nanopet-tune schema options|space``: the JSON Schema of an options file or a search-space file, for editors
(the YAML language server completes and checks a file whose first line is ``# yaml-language-server: $schema=FILE``)."""

from __future__ import annotations

import json


def add_parsers(commands) -> None:
    schema = commands.add_parser("schema", help="print the JSON Schema of an options file or a search-space file, for editors")
    schema.add_argument("kind", choices=["options", "space"], help="options: an options.yaml; space: a search-space file")


def run_schema(args) -> int:
    from nanopet.schema import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


COMMANDS = {"schema": run_schema}
