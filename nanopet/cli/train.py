"""``nanopet-tune train OPTIONS``: one model from an options file, into a run folder it refuses to mix.

The run folder holds ``model.ckpt``, ``metrics.csv``, ``checkpoints/`` (the run's results), ``hypers.yaml``
(the options with every default filled in) and ``train.log`` (its records).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nanopet.errors import InputError

# What `train` writes into its folder: a run's results (refused or replaced, never mixed) and its records.
RUN_RESULTS = ("model.ckpt", "metrics.csv")
RUN_RECORDS = ("hypers.yaml", "train.log")


def add_parsers(commands) -> None:
    """Add the ``train`` subcommand to an argparse subparsers object."""
    train = commands.add_parser("train", help="train one model from an options.yaml")
    train.add_argument("options", help="options file (metatrain-style; see README)")
    train.add_argument("-o", "--output-dir", help="where model.ckpt, metrics.csv, checkpoints/, hypers.yaml (the options with "
                       "every default filled in) and train.log go (default: runs/<options name>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue exactly from a checkpoint written by an earlier run")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder (default: refuse)")
    train.add_argument("--device", help="override the options' device (auto, cpu, cuda, cuda:N)")


def run_train(args) -> int:
    from nanopet.options import read_yaml, resolve_options
    from nanopet.data.splits import absolute_datasets
    from nanopet.options import write_options
    from nanopet.loss import metric_parts
    from nanopet.train import train

    path = Path(args.options)
    options = read_yaml(path)
    if args.device:
        options["device"] = args.device
    output_dir = Path(args.output_dir or Path("runs") / path.stem)
    resolved = absolute_datasets(resolve_options(options), path.parent)  # a bad option is an error before anything is written
    hypers = output_dir / "hypers.yaml"
    own = hypers.resolve() == path.resolve()  # training the hypers.yaml of this folder again: it stays as it is
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the folder
    if main_rank:
        prepare_run_folder(output_dir, args.resume, args.overwrite, keep_hypers=own)
        if not own:
            write_options(hypers, resolved, [f"options of the run in {output_dir} (every default filled in)",
                                             f"train it again with: nanopet-tune train {hypers} -o OTHER_DIR"])
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "train.log" if main_rank else os.devnull, "a" if args.resume else "w") as log_file:
        def log(message: str) -> None:
            print(message, flush=True)
            log_file.write(message + "\n")
            log_file.flush()

        result = train(options, output_dir=output_dir, resume=args.resume, base_dir=path.parent, log=log)
    best = next((row for row in result.history if row["epoch"] == result.best_epoch), {})
    per_structure = "energy" in resolved["architecture"]["training"]["per_structure_targets"]
    validation = "".join(f", {part}" for part in metric_parts(best, "val", False, per_structure))
    print(f"best epoch {result.best_epoch} (validation loss {result.best_val_loss:.4e}{validation}); model: {output_dir / 'model.ckpt'}, "
          f"metrics: {output_dir / 'metrics.csv'}, options: {hypers}, log: {output_dir / 'train.log'}")
    return 0


def prepare_run_folder(output_dir: Path, resume, overwrite: bool, keep_hypers: bool) -> None:
    """Refuse a folder holding an earlier run unless that run is resumed; with ``overwrite`` remove it first."""
    checkpoints = sorted((p for p in (output_dir / "checkpoints").glob("model_*.ckpt") if p.stem[6:].isdigit()),
                         key=lambda p: int(p.stem[6:]))
    earlier = [name for name in RUN_RESULTS if (output_dir / name).exists()] + (["checkpoints/"] if checkpoints else [])
    inside = resume is not None and Path(resume).resolve().parent in (output_dir.resolve(), (output_dir / "checkpoints").resolve())
    if overwrite and inside:
        raise InputError(f"--overwrite would remove {resume}, the checkpoint --resume continues from; give one of them")
    if earlier and overwrite:
        for name in RUN_RESULTS + RUN_RECORDS:
            if not (keep_hypers and name == "hypers.yaml"):
                (output_dir / name).unlink(missing_ok=True)
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    elif earlier and not resume:
        last = output_dir / "model.ckpt" if (output_dir / "model.ckpt").is_file() else (checkpoints[-1] if checkpoints else None)
        how = f"continue it with --resume {last}, " if last else ""
        raise InputError(f"{output_dir}: holds an earlier run ({', '.join(earlier)}); {how}replace it with --overwrite, "
                         "or train into another folder with -o DIR")
    elif earlier and not inside:
        raise InputError(f"{output_dir}: holds an earlier run ({', '.join(earlier)}) that --resume {resume} would mix with; "
                         "resume into another folder with -o DIR, or replace that run with --overwrite")


COMMANDS = {"train": run_train}
