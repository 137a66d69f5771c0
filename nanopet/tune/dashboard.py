"""Looking at studies: ``nanopet-tune studies`` (a table) and ``nanopet-tune dashboard`` (optuna-dashboard)."""

from __future__ import annotations

from pathlib import Path

from nanopet.errors import InputError
from nanopet.tune.storage import find_storage, list_studies, masked, open_storage

__all__ = ["list_studies", "format_rows", "serve"]  # list_studies: the storage's, for `nanopet-tune studies`


def format_rows(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no studies found"]
    header = ("study", "complete", "pruned", "fail", "running", "waiting", "best", "metric", "storage")
    table = [header] + [(r["study"], *(str(r.get(k, "")) for k in header[1:6]),
                         f"{r['best'][0]:.4g}" + (f", {r['best'][1]:.4g}" if len(r["best"]) > 1 else "") if r.get("best") else "-",
                         str(r.get("metric", "")), str(r.get("storage", ""))) for r in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def serve(study: str, host: str = "127.0.0.1", port: int = 8080, directory: str | Path = "studies",
          storage: str | None = None, out=print) -> None:
    """Start optuna-dashboard on the storage of ``study`` (blocks until Ctrl-C)."""
    import optuna_dashboard

    url = find_storage(study, directory, storage)
    backend = open_storage(url, create=False)
    shown = f"[{host}]" if ":" in host else host
    out(f"optuna-dashboard for {study} ({masked(url)}): http://{shown}:{port}/  (Ctrl-C to stop)")
    try:
        optuna_dashboard.run_server(backend, host=host, port=port)
    except OSError as error:
        raise InputError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error}); try another --port") from None
