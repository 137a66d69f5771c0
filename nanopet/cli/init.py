"""``nanopet-tune init DATA.xyz``: write a search space fitted to a dataset and to this machine, then say the command
that runs it and what comes after (the dashboard, retrain)."""

from __future__ import annotations

from nanopet.cli.arguments import duration, positive_int


def add_parsers(commands) -> None:
    """Add the ``init`` subcommand to an argparse subparsers object."""
    init = commands.add_parser(
        "init", help="write a commented search space fitted to your data and this machine (keys, units, splits, "
                     "cutoffs, initialisation, model size, pruner, trials x epochs for --budget)")
    init.add_argument("data", nargs="+", metavar="DATA", help="structure files (extended XYZ, or any ase format)")
    init.add_argument("--budget", type=duration, default=3600.0, metavar="TIME",
                      help="wall-clock time the search may take here: seconds, or 5m, 1h (default 1h)")
    init.add_argument("--workers", type=positive_int, metavar="N",
                      help="worker processes the search will run (default: one per GPU, else one per core up to 8)")
    init.add_argument("--energy-unit", metavar="UNIT",
                      help="the energies' unit (eV, meV, Hartree, kcal/mol, kJ/mol, Ry): asked for when the file cannot "
                           "tell and its values do not look like eV")
    init.add_argument("--energy-key", metavar="KEY", help="the energy's key, when the file holds several")
    init.add_argument("--forces-key", metavar="KEY", help="the forces' key, when the file holds several; none: no forces")
    init.add_argument("--stress-key", metavar="KEY", help="the stress's (or virial's) key, when the file holds several; "
                                                          "none: no stress")
    init.add_argument("-o", "--output", metavar="SPACE.yaml",
                      help="the search space to write (default: DATA-search.yaml beside the first file)")
    init.add_argument("--name", help="the study's name (default: the first file's name)")
    init.add_argument("--drop-suspicious", action="store_true",
                      help="leave out the frames inspect flags (overlapping atoms, duplicates, outliers): the space reads "
                           "a copy of the data without them, written beside it")
    init.add_argument("--overwrite", action="store_true", help="replace an existing search-space file")


def run_init(args) -> int:
    from nanopet.tune.init import init_search

    def say(message: str) -> None:
        print(message, flush=True)

    result = init_search(args.data, budget=args.budget, workers=args.workers, energy_unit=args.energy_unit,
                         energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key,
                         output=args.output, name=args.name, overwrite=args.overwrite,
                         drop_suspicious=args.drop_suspicious, out=say)
    for line in result.summary:
        say(line)
    name = result.raw["study"]["name"]
    say(f"wrote {result.path} (each choice under its reason); run the search:")
    say(f"  {result.command}")
    say(f"then: nanopet-tune dashboard {name} (while it runs), nanopet-tune retrain {name} (the best trial against the "
        f"defaults on the held-out test set), reports/{name}/index.html")
    return 0


COMMANDS = {"init": run_init}
