"""``nanopet-tune export`` and ``eval``: their arguments and handlers; the work is done by
``nanopet.export.export_checkpoint`` and ``nanopet.evaluate.evaluate_model``."""

from __future__ import annotations

import argparse

from nanopet.cli.arguments import positive_int


def add_parsers(commands) -> None:
    """Add the ``export`` and ``eval`` subcommands to an argparse subparsers object."""
    export = commands.add_parser("export", help="write a checkpoint as a metatomic TorchScript model.pt (ASE, LAMMPS, "
                                 "i-PI, ... through metatomic)")
    export.add_argument("checkpoint", help="a model.ckpt written by train or retrain (its best-validation weights)")
    export.add_argument("-o", "--output", help="the exported model (default: the checkpoint's name with .pt)")

    evaluate = commands.add_parser("eval", help="predictions and RMSE/MAE of a model (.ckpt or exported .pt) on labelled data")
    evaluate.add_argument("model", help="a model.ckpt, or a model.pt written by export")
    evaluate.add_argument("data", nargs="+", help="extended XYZ file(s), or an options.yaml whose test_set is used")
    evaluate.add_argument("-o", "--output", help="write the predictions here as extended XYZ")
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="structures per model call (default 16)")


def run_export(args: argparse.Namespace) -> int:
    from nanopet.export import export_checkpoint

    print(f"exported {args.checkpoint} to {export_checkpoint(args.checkpoint, args.output)}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from nanopet.evaluate import evaluate_model

    evaluate_model(args.model, args.data, args.output, batch_size=args.batch_size)
    return 0


COMMANDS = {"export": run_export, "eval": run_eval}
