"""The ``nanopet-tune`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanopet.errors import NanoPETError

SUBCOMMANDS = ("train", "make-data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanopet-tune", description="Train and tune NanoPET interatomic potentials.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model from an options.yaml")
    train.add_argument("options", help="options file (metatrain-style; see README)")
    train.add_argument("-o", "--output-dir", help="where model.ckpt, metrics.csv and checkpoints/ go (default: runs/<options name>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue exactly from a checkpoint written by an earlier run")
    train.add_argument("--device", help="override the options' device (auto, cpu, cuda, cuda:N)")

    data = commands.add_parser("make-data", help="generate the built-in EMT dataset as extended XYZ")
    data.add_argument("name", choices=["emt-alloy"], help="dataset generator")
    data.add_argument("output", help="output .xyz file")
    data.add_argument("--n", type=int, default=1000, help="number of structures (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run_train(args) -> int:
    from nanopet.options import read_yaml
    from nanopet.train import train

    path = Path(args.options)
    options = read_yaml(path)
    if args.device:
        options["device"] = args.device
    output_dir = Path(args.output_dir or Path("runs") / path.stem)
    result = train(options, output_dir=output_dir, resume=args.resume, base_dir=path.parent)
    print(f"best epoch {result.best_epoch} (validation loss {result.best_val_loss:.4e}); model: {output_dir / 'model.ckpt'}, "
          f"metrics: {output_dir / 'metrics.csv'}")
    return 0


def run_make_data(args) -> int:
    from nanopet.data.emt import write_emt_alloy

    def progress(i, n):
        if (i + 1) % max(1, n // 10) == 0 or i + 1 == n:
            print(f"  {i + 1}/{n} structures", file=sys.stderr)

    path = write_emt_alloy(args.output, args.n, seed=args.seed, progress=progress)
    print(f"wrote {args.n} structures to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "make-data": run_make_data}
    try:
        return handlers[args.command](args)
    except NanoPETError as error:
        print(f"nanopet-tune: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("nanopet-tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
