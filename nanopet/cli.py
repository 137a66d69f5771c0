"""The ``nanopet-tune`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from nanopet import __version__
from nanopet.errors import InputError, NanoPETError

SUBCOMMANDS = ("train", "make-data", "search", "dashboard", "studies", "report", "retrain", "compare-losses", "export", "eval")
# One spelling per meaning in every command: --directory (where studies live), -o/--output-dir (where this
# command's models go), --reports-dir (where reports go). Older spellings stay as hidden aliases.
# What `train` writes into its folder: a run's results (refused or replaced, never mixed) and its records.
RUN_RESULTS = ("model.ckpt", "metrics.csv")
RUN_RECORDS = ("hypers.yaml", "train.log")
SEARCH_SECTIONS = {"study", "objective", "budget", "strategy", "parameters", "driver"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanopet-tune", description="Train and tune NanoPET interatomic potentials.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model from an options.yaml")
    train.add_argument("options", help="options file (metatrain-style; see README)")
    train.add_argument("-o", "--output-dir", help="where model.ckpt, metrics.csv, checkpoints/, hypers.yaml (the options with "
                       "every default filled in) and train.log go (default: runs/<options name>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue exactly from a checkpoint written by an earlier run")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder (default: refuse)")
    train.add_argument("--device", help="override the options' device (auto, cpu, cuda, cuda:N)")

    search = commands.add_parser("search", help="run or resume a hyperparameter search (also: nanopet-tune SPACE.yaml)")
    search.add_argument("space", help="search-space file, e.g. search_spaces/default.yaml (see README)")
    search.add_argument("--workers", type=int, help="worker processes sharing the study (default: one per GPU, else 1)")
    search.add_argument("--gpus", type=gpu_list, help="GPUs to use, one worker each, e.g. 0,1 (default: all visible)")
    search.add_argument("--storage", help="study storage: a journal file, sqlite:///file.db or postgresql://user:pw@host/db "
                        "(default: studies/<name>/journal.log)")
    search.add_argument("--n-trials", type=int, help="override budget.n_trials")
    search.add_argument("--timeout", type=duration, help="override budget.timeout: seconds, or 30m, 2h")
    search.add_argument("--study-name", help="override study.name (default: the file name)")
    search.add_argument("--directory", help="override study.directory (default: studies)")
    search.add_argument("--driver", choices=("optuna", "ray"),
                        help="optuna: worker processes sharing the study; ray: a Ray Tune experiment "
                        "(default: the file's `driver:`, else optuna)")
    search.add_argument("--address", help="with the ray driver: join a running Ray cluster (auto or HOST:PORT of `ray start --head`); "
                        "default: the file's driver.address, else a local Ray runtime")
    search.add_argument("--cpus-per-trial", type=float, help="with the ray driver: CPUs reserved per trial (default 1)")
    search.add_argument("--gpus-per-trial", type=float,
                        help="with the ray driver: GPUs per trial, a fraction shares one GPU (default: 1 when the cluster has GPUs, else 0)")

    dashboard = commands.add_parser("dashboard", help="start optuna-dashboard on a study's storage")
    dashboard.add_argument("study", help="study name (folder under studies/), a journal file, or a storage URL")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    dashboard.add_argument("--storage", help="storage URL (needed for a PostgreSQL study with a password)")
    dashboard.add_argument("--directory", default="studies", help="where studies live (default: studies)")

    studies = commands.add_parser("studies", help="list studies with trial counts by state and best value")
    studies.add_argument("--storage", help="list the studies of this storage URL instead of studies/*/")
    studies.add_argument("--directory", default="studies", help="where studies live (default: studies)")

    from nanopet.report.command import add_parser as add_report_parser

    add_report_parser(commands)
    from nanopet.commands_retrain import add_parsers as add_retrain_parsers

    add_retrain_parsers(commands)  # retrain, compare-losses
    from nanopet.commands_export import add_parsers as add_export_parsers

    add_export_parsers(commands)  # export, eval

    data = commands.add_parser("make-data", help="generate a built-in dataset (EMT alloys, xtb molecules) as extended XYZ")
    data.add_argument("name", choices=["emt-alloy", "xtb-molecules"], help="dataset generator")
    data.add_argument("output", help="output .xyz file")
    data.add_argument("--n", type=int, default=1000, help="number of structures (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU numbers like 0,1, got {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"expected GPU numbers like 0,1, got {text!r}")
    return gpus


def duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a duration like 30m, 2h, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def run_search(args, argv: list[str]) -> int:
    from nanopet.options import read_yaml
    from nanopet.report import report_after_search
    from nanopet.tune import load_search_space, run

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers: must be at least 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        raise InputError(f"--n-trials: must be at least 1, got {args.n_trials}")
    raw = read_yaml(args.space)
    if raw and not SEARCH_SECTIONS & set(raw):  # an empty file: the search-space reader says what is missing
        raise InputError(f"{args.space}: an options file (one model, no parameters: to tune), not a search space; "
                         f"train it with: nanopet-tune train {args.space}")
    space = load_search_space(args.space)
    driver = args.driver or space.driver.type
    for flag, value in (("--address", args.address), ("--cpus-per-trial", args.cpus_per_trial), ("--gpus-per-trial", args.gpus_per_trial)):
        if value is not None and driver != "ray":
            raise InputError(f"{flag}: only with the ray driver (--driver ray, or driver: ray in {args.space})")
    space = space.replace(storage=args.storage, study_name=args.study_name, directory=args.directory,
                          driver={"type": driver, "address": args.address, "cpus_per_trial": args.cpus_per_trial,
                                  "gpus_per_trial": args.gpus_per_trial})
    result = run(space, workers=args.workers, gpus=args.gpus, n_trials=args.n_trials, timeout=args.timeout,
                 out=lambda message: print(message, flush=True), resume_command="nanopet-tune " + shlex.join(argv))
    report_after_search(space.study.name, space.study.directory, space.study.storage, out=lambda m: print(m, flush=True))
    return 130 if result.status == "interrupted" else 0


def run_dashboard(args) -> int:
    from nanopet.tune import serve_dashboard

    serve_dashboard(args.study, args.host, args.port, args.directory, args.storage, out=lambda m: print(m, flush=True))
    return 0


def run_studies(args) -> int:
    from nanopet.tune.dashboard import format_rows, list_studies

    for line in format_rows(list_studies(args.directory, args.storage)):
        print(line)
    return 0


def run_report(args) -> int:
    from nanopet.report.command import run

    return run(args)


def run_train(args) -> int:
    from nanopet.options import read_yaml, resolve_options
    from nanopet.data.splits import absolute_datasets
    from nanopet.retrain import write_options
    from nanopet.train import metric_parts, train

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


def run_make_data(args) -> int:
    from nanopet.data.builtin import write_builtin_dataset

    if args.n < 1:
        raise InputError(f"--n: must be at least 1 structure, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed: must be 0 or more, got {args.seed}")
    path = Path(args.output)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the file to write, e.g. {path / (args.name + '.xyz')}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # before the generation: an unwritable place fails at once
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{path}: cannot create its folder: a file of that name is in the way") from None
    except OSError as error:
        raise InputError(f"{path}: cannot create its folder ({error.strerror or error})") from None
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"{path}: cannot write into {path.parent} (permission denied)")

    try:
        path = write_builtin_dataset(args.name, path, args.n, seed=args.seed)
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from None
    print(f"wrote {args.n} structures to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0].lower().endswith((".yaml", ".yml")):
        argv = ["search"] + argv  # nanopet-tune SPACE.yaml means search
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "make-data": run_make_data, "search": lambda a: run_search(a, argv),
                "dashboard": run_dashboard, "studies": run_studies, "report": run_report}
    from nanopet.commands_retrain import COMMANDS as RETRAIN_COMMANDS

    handlers.update(RETRAIN_COMMANDS)
    from nanopet.commands_export import COMMANDS as EXPORT_COMMANDS

    handlers.update(EXPORT_COMMANDS)
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
