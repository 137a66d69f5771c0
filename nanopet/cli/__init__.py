"""The ``nanopet-tune`` command line. Every user error is one line on stderr and exit code 2.

``main`` builds one parser from the command groups below and runs the chosen command's handler; each group
module adds its subcommands with ``add_parsers(commands)`` and names their handlers in ``COMMANDS``:

- ``train``: ``train`` (one model from an options file);
- ``search``: ``search`` (also ``nanopet-tune SPACE.yaml``), ``dashboard``, ``studies``;
- ``report``: ``report``;
- ``retrain``: ``retrain``, ``compare-losses``;
- ``export``: ``export``, ``eval``;
- ``data``: ``make-data``, ``inspect``, ``prepare``;
- ``init``: ``init`` (a search space fitted to a dataset and this machine);
- ``schema``: ``schema`` (the JSON Schema of options and search-space files);
- ``arguments``: the argument types and hidden aliases they share.

The handlers import the work they do when they run, so ``--help`` and a bad flag answer at once.
``python -m nanopet.cli`` runs ``main`` (``__main__.py``).
"""

from __future__ import annotations

import argparse
import sys

from nanopet import __version__
from nanopet.cli import data, export, init, report, retrain, schema, search, train
from nanopet.errors import NanoPETError

SUBCOMMANDS = ("train", "make-data", "inspect", "prepare", "init", "search", "dashboard", "studies", "report", "retrain", "compare-losses",
               "export", "eval", "schema")
# One spelling per meaning in every command: --directory (where studies live), -o/--output-dir (where this
# command's models go), --reports-dir (where reports go). Older spellings stay as hidden aliases.
GROUPS = (train, search, report, retrain, export, data, init, schema)  # in the order of --help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanopet-tune", description="Train and tune NanoPET interatomic potentials.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0].lower().endswith((".yaml", ".yml")):
        argv = ["search"] + argv  # nanopet-tune SPACE.yaml means search
    args = build_parser().parse_args(argv)
    handlers = {"search": lambda a: search.run_search(a, argv)}  # the resume hint repeats the command line
    for group in GROUPS:
        handlers.update(group.COMMANDS)
    try:
        return handlers[args.command](args)
    except NanoPETError as error:
        print(f"nanopet-tune: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("nanopet-tune: interrupted", file=sys.stderr)
        return 130

