"""Study reports: ``nanopet-tune report <study>`` -> ``reports/<study>/index.html``, ``trials.csv``, ``summary.md``.

Public API:

- ``write_report(study, directory="studies", storage=None, out_dir="reports") -> Path``: the page
- ``report_after_search(study, directory, storage, out=print) -> Path | None``: the same at the end of a
  search, into ``reports/`` beside the studies folder, with a one-line pruning check when trials were
  pruned; a problem is one line, never an exception
- ``write_page(path, title, header_lines, sections) -> Path``: the offline page writer, shared with
  other reports (plotly.min.js is written once beside the page)

Modules: ``collect`` (storage -> tables), ``importance``, ``figures``, ``page``, ``study`` (the three
files); the ``report`` subcommand is ``nanopet.cli.report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from nanopet.report.page import write_page


def write_report(study: str, directory: str | Path = "studies", storage: str | None = None,
                 out_dir: str | Path = "reports") -> Path:
    """Write ``<out_dir>/<study>/index.html``, ``trials.csv`` and ``summary.md``; return the page path.

    ``study``: a study name (``<directory>/<name>/``), a stage study's name, a journal file or a
    storage URL; ``storage`` overrides where it is stored. Raises ``InputError`` for an unknown study;
    an empty study, or one whose trials all failed, gets a report that says what is missing.
    """
    from nanopet.report.study import write_study_report

    return write_study_report(study, directory=directory, storage=storage, out_dir=out_dir)[0]


def default_out_dir(directory: str | Path = "studies") -> Path:
    """``reports/`` beside the studies folder (``studies`` -> ``reports``)."""
    return Path(directory).parent / "reports"


def report_after_search(study: str, directory: str | Path = "studies", storage: str | None = None,
                        out: Callable[[str], None] = print) -> Path | None:
    """Write the report of a search that just ended; a failure is reported through ``out``, not raised,
    so it never turns a finished search into an error."""
    from nanopet.report.ranking import pruning_check
    from nanopet.report.study import write_study_report

    try:
        path, data = write_study_report(study, directory=directory, storage=storage, out_dir=default_out_dir(directory))
        check = pruning_check(data)
    except Exception as error:  # noqa: BLE001 - the search's results are safe in the storage either way
        out(f"report not written ({type(error).__name__}: {error}); try: nanopet-tune report {study}")
        return None
    if check:
        out(check)
    out(f"report: {path}")
    return path


__all__ = ["write_report", "report_after_search", "write_page"]
