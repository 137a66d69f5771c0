"""Data commands: ``nanopet-tune make-data NAME OUTPUT`` writes a built-in dataset (EMT alloys, xtb molecules)
as extended XYZ; ``nanopet-tune inspect DATA.xyz [MORE.xyz ...]`` says what structure files hold; ``nanopet-tune
prepare DATA`` prepares a dataset on disk (``nanopet.data.prepare``) ahead of training or a search."""

from __future__ import annotations

import os
from pathlib import Path

from nanopet.cli.arguments import positive_int
from nanopet.errors import InputError


def add_parsers(commands) -> None:
    """Add the ``make-data`` subcommand to an argparse subparsers object."""
    data = commands.add_parser("make-data", help="generate a built-in dataset (EMT alloys, xtb molecules) as extended XYZ")
    data.add_argument("name", choices=["emt-alloy", "xtb-molecules"], help="dataset generator")
    data.add_argument("output", help="output .xyz file")
    data.add_argument("--n", type=int, default=1000, help="number of structures (default 1000)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    prepare = commands.add_parser("prepare", help="prepare a dataset on disk once (structures, labels, neighbour lists), "
                                  "memory-mapped by every later train, search worker, retrain and eval")
    prepare.add_argument("data", help="a structure file (default keys: energy, forces, stress) or an options.yaml "
                         "(its training_set, validation_set and test_set datasets)")
    prepare.add_argument("--cutoff", type=float, help="neighbour-list cutoff in A: the largest any run will use "
                         "(default: the options' cutoff, else 5.0)")
    prepare.add_argument("--jobs", type=positive_int, help="processes (default: every core)")

    inspect = commands.add_parser(
        "inspect", help="what structure files hold: sizes, species, label keys and units, neighbours per cutoff, "
                        "memory, suspicious frames")
    inspect.add_argument("data", nargs="+", metavar="DATA", help="structure files (extended XYZ, or any ase format)")
    inspect.add_argument("--energy-unit", metavar="UNIT",
                         help="the energies' unit, which a file cannot tell (eV, meV, Hartree, kcal/mol, kJ/mol, Ry; "
                              "default: eV assumed)")
    inspect.add_argument("--memory-gb", type=float, default=16.0, metavar="GB",
                         help="memory for the atoms-per-pass estimate (default 16)")
    inspect.add_argument("--sample", type=int, default=500, metavar="N",
                         help="structures whose neighbours are counted, a seeded random sample (default 500)")
    inspect.add_argument("--seed", type=int, default=0, help="seed of that sample (default 0)")


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


def run_inspect(args) -> int:
    from nanopet.data.inspection import inspect_data, render_report

    if args.memory_gb <= 0:
        raise InputError(f"--memory-gb: must be more than 0, got {args.memory_gb:g}")
    if args.sample < 1:
        raise InputError(f"--sample: must be at least 1 structure, got {args.sample}")
    report = inspect_data(args.data, energy_unit=args.energy_unit, sample_size=args.sample, seed=args.seed)
    print(render_report(report, memory_gb=args.memory_gb))
    return 0


def run_prepare(args) -> int:
    from nanopet.data.prepare import prepare
    from nanopet.data.read import dataset_specs
    from nanopet.options import default_hypers, read_yaml, resolve_options

    path = Path(args.data)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix in (".yaml", ".yml"):
        options = resolve_options(read_yaml(path))
        cutoff = args.cutoff or float(options["architecture"]["model"]["cutoff"])
        datasets = [(key, options[key], path.parent) for key in ("training_set", "validation_set", "test_set")
                    if options.get(key) is not None and not isinstance(options[key], (int, float))]
    else:
        cutoff = args.cutoff or float(default_hypers()["model"]["cutoff"])
        datasets = [(str(path), str(path), ".")]
    if cutoff <= 0:
        raise InputError(f"--cutoff: must be positive, got {cutoff:g}")
    for name, dataset, base_dir in datasets:
        folder = prepare(dataset_specs(dataset, base_dir, name), cutoff, jobs=args.jobs)
        print(f"{name}: {folder}")
    return 0


COMMANDS = {"make-data": run_make_data, "inspect": run_inspect, "prepare": run_prepare}
