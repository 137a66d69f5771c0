"""``nanopet-tune retrain`` and ``compare-losses``: their arguments and handlers (the work: ``nanopet.retrain``,
``nanopet.compare_losses``), with the hint that says how to resume after Ctrl-C."""

from __future__ import annotations

import contextlib
import sys

from nanopet.cli.arguments import fraction, hidden_alias, positive_int


def add_parsers(commands) -> None:
    """Add the ``retrain`` and ``compare-losses`` subcommands to an argparse subparsers object."""
    retrain = commands.add_parser("retrain", help="train a study's best trial (or trial N) to convergence over several seeds, "
                                  "compare with the defaults on the test set")
    retrain.add_argument("study", help="study name (folder under studies/), its journal file, or a storage URL")
    retrain.add_argument("--trial", help="trial to retrain instead of the best: N, stageK-N in a staged study, or STUDY#N")
    retrain.add_argument("--epochs", type=positive_int, help="epochs of every run (default: 10 x the search's epochs; the expected "
                         "time is printed before training, from the search's seconds per epoch)")
    retrain.add_argument("--seeds", type=positive_int, default=3, help="runs per hypers, seeds S..S+n-1 (default 3)")
    retrain.add_argument("--device", help="override the options' device (cuda, cpu, cuda:N, auto)")
    retrain.add_argument("--storage", help="storage URL (needed for a PostgreSQL study with a password)")
    retrain.add_argument("--directory", default="studies", help="where studies live (default: studies)")
    retrain.add_argument("-o", "--output-dir", help="where the runs go (default: studies/<study>/best)")
    retrain.add_argument("--test-set", type=fraction, help="split the data anew with this test fraction (for a study "
                         "searched without a test set)")
    retrain.add_argument("--no-equal-time", dest="equal_time", action="store_false", help="compare at equal epochs only (by "
                         "default the hypers that train an epoch faster also train for the other's time)")

    losses = commands.add_parser("compare-losses", help="train the same hypers with each loss type (or reduction, weights) "
                                 "and seed; report in reports/<name>/losses.html")
    losses.add_argument("source", help="a study (its best trial's hypers) or an options.yaml (may hold a compare_losses: section)")
    losses.add_argument("--types", nargs="+", choices=["mse", "mae", "huber"], help="loss types (default: mse mae huber)")
    losses.add_argument("--reductions", nargs="+", choices=["mean", "sum"], help="reductions to compare")
    losses.add_argument("--weights", nargs="+", metavar="TERM=W[,TERM=W]", help="loss-weight variants, each merged over the "
                        "hypers' weights, e.g. forces=1 forces=10,energy=0.1")
    losses.add_argument("--deltas", metavar="TERM=D[,TERM=D]", help="huber deltas (default: the hypers', then 0.1 x RMS of "
                        "each term's target on the training set)")
    losses.add_argument("--seeds", type=positive_int, help="runs per variant (default 3)")
    losses.add_argument("--epochs", type=positive_int, help="epochs of every run (default: the hypers' num_epochs; for a study, "
                        "its search's epochs)")
    losses.add_argument("--device", help="override the options' device (cuda, cpu, cuda:N, auto)")
    losses.add_argument("--trial", help="a study's trial instead of its best: N, stageK-N or STUDY#N")
    losses.add_argument("--storage", help="storage URL (needed for a PostgreSQL study with a password)")
    losses.add_argument("--directory", default="studies", help="where studies live (default: studies)")
    losses.add_argument("-o", "--output-dir", dest="runs", metavar="DIR", help="where the models go (default: studies/<study>/losses or "
                        "runs/<options name>/losses)")
    losses.add_argument("--reports-dir", dest="reports", metavar="DIR", help="where reports go (default: reports/ beside the studies folder); "
                        "the report is DIR/<name>/losses.html")
    hidden_alias(losses, "--runs", dest="runs")  # the spellings before one vocabulary
    hidden_alias(losses, "--reports", dest="reports")
    losses.add_argument("--test-set", type=fraction, help="split the data anew with this test fraction")
    losses.add_argument("--write-space", metavar="PATH", help="instead of training: write a loss search space (the loss "
                        "parameters of --template) with the other hypers fixed at the study's best; run it with nanopet-tune PATH")
    losses.add_argument("--template", default="search_spaces/losses.yaml", help="search space whose loss parameters "
                        "--write-space uses (default: search_spaces/losses.yaml)")


@contextlib.contextmanager
def _resume_hint_on_interrupt():
    """On Ctrl-C, say how to resume, then let the interrupt through (the CLI exits 130)."""
    try:
        yield
    except KeyboardInterrupt:
        print("finished epochs are kept in each run's checkpoints; run the same command again to resume",
              file=sys.stderr, flush=True)
        raise


def run_retrain(args) -> int:
    from nanopet.retrain import retrain

    with _resume_hint_on_interrupt():
        retrain(args.study, trial=args.trial, epochs=args.epochs, seeds=args.seeds, device=args.device,
                directory=args.directory, storage=args.storage, output_dir=args.output_dir, test_set=args.test_set,
                out=lambda message: print(message, flush=True), equal_time=args.equal_time)
    return 0


def run_compare_losses(args) -> int:
    from nanopet.compare_losses import compare_losses, losses_space, parse_terms, write_losses_space

    if args.write_space:
        raw = losses_space(args.source, args.template, trial=args.trial, directory=args.directory, storage=args.storage)
        path = write_losses_space(args.write_space, raw, args.source)
        print(f"wrote {path}: the loss parameters of {args.template} with the other hypers of study {args.source}'s best; "
              f"run it with: nanopet-tune {path}")
        return 0
    weights = [parse_terms(text, "--weights") for text in args.weights] if args.weights else None
    deltas = parse_terms(args.deltas, "--deltas") if args.deltas else None
    with _resume_hint_on_interrupt():
        compare_losses(args.source, types=args.types, reductions=args.reductions, weights=weights, deltas=deltas,
                       seeds=args.seeds, epochs=args.epochs, device=args.device, trial=args.trial, directory=args.directory,
                       storage=args.storage, reports=args.reports, runs=args.runs, test_set=args.test_set,
                       out=lambda message: print(message, flush=True))
    return 0


COMMANDS = {"retrain": run_retrain, "compare-losses": run_compare_losses}
