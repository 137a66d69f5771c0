"""``nanopet-tune report STUDY``: write ``reports/<study>/index.html``, ``trials.csv`` and ``summary.md``."""

from __future__ import annotations

from nanopet.cli.arguments import hidden_alias


def add_parser(commands) -> None:
    """Add the ``report`` subcommand to an argparse subparsers object."""
    report = commands.add_parser("report", help="write an offline HTML report of a study (reports/<study>/index.html)")
    report.add_argument("study", help="study name (folder under studies/), a stage study's name, a journal file, or a storage URL")
    report.add_argument("--storage", help="storage URL (needed for a PostgreSQL study with a password)")
    report.add_argument("--directory", default="studies", help="where studies live (default: studies)")
    report.add_argument("--reports-dir", metavar="DIR", help="where reports go (default: reports/ beside the studies folder); "
                        "the report is DIR/<study>/")
    # the spellings before every command shared one vocabulary: accepted, not shown
    hidden_alias(report, "--studies-dir", dest="directory")
    hidden_alias(report, "--out", dest="reports_dir")


def run(args, out=print) -> int:
    from nanopet.report import default_out_dir
    from nanopet.report.study import CSV, SUMMARY, status_line, write_study_report

    out_dir = args.reports_dir if args.reports_dir else default_out_dir(args.directory)
    page, data = write_study_report(args.study, directory=args.directory, storage=args.storage, out_dir=out_dir)
    out(f"report of {data.search}: {page} (also {page.parent / CSV}, {page.parent / SUMMARY})")
    if data.status != "finished":
        out("  " + status_line(data))
    return 0


COMMANDS = {"report": run}
add_parsers = add_parser  # the name nanopet.cli calls in every command group
