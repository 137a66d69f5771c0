"""``nanopet-tune search SPACE`` (also ``nanopet-tune SPACE.yaml``), ``dashboard STUDY`` and ``studies``: running
a search, watching it, and listing the studies."""

from __future__ import annotations

import shlex
import time

from nanopet.cli.arguments import duration, gpu_list
from nanopet.errors import InputError

SEARCH_SECTIONS = {"study", "objective", "budget", "strategy", "parameters", "driver"}


def add_parsers(commands) -> None:
    """Add the ``search``, ``dashboard`` and ``studies`` subcommands to an argparse subparsers object."""
    search = commands.add_parser("search", help="run or resume a hyperparameter search (also: nanopet-tune SPACE.yaml)")
    search.add_argument("space", help="search-space file, e.g. search_spaces/default.yaml (see docs/reference/search-space-format.md)")
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
    studies.add_argument("--storage", help="list the studies of this storage URL instead of the study folders under "
                                            "--directory")
    studies.add_argument("--directory", default="studies", help="where studies live (default: studies)")


def run_search(args, argv: list[str]) -> int:
    started = time.time()  # the search's last line says the time taken since
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
                 out=lambda message: print(message, flush=True), resume_command="nanopet-tune " + shlex.join(argv),
                 started=started)
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


# ``search`` also needs the command line it was given (for the resume hint): nanopet.cli.main passes it
COMMANDS = {"dashboard": run_dashboard, "studies": run_studies}
