"""Storages other than the journal file, and looking at studies: PostgreSQL (a real throwaway server),
``nanopet-tune studies`` and ``nanopet-tune dashboard``."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tune_support import cli, cli_env, tiny_space, write_space

from nanopet.tune.storage import open_storage
from nanopet.tune.plan import counted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl in a temporary folder): its URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = Path(found[-1]) if found else (Path(shutil.which("initdb")) if shutil.which("initdb") else None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    bin_dir = initdb.parent
    root = Path(tempfile.mkdtemp(prefix="nanopet-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*command):
        subprocess.run(as_user + [str(c) for c in command], check=True, capture_output=True, timeout=120)

    run(bin_dir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(bin_dir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql(tmp_path, postgres):
    path = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", budget={"n_trials": 6, "epochs": 3}))
    result = cli(path, "--workers", "2", "--storage", postgres, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    done = optuna.load_study(study_name="tiny", storage=open_storage(postgres)).get_trials()
    assert len(counted(done)) == 6 and all(t.state == TrialState.COMPLETE for t in done)
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2
    assert (tmp_path / "studies" / "tiny" / "storage.url").read_text().strip() == postgres
    listing = cli("studies", cwd=tmp_path)  # found through studies/tiny/storage.url
    assert listing.returncode == 0 and "tiny" in listing.stdout and postgres in listing.stdout


def test_bad_storage_url_is_a_one_line_error(tmp_path):
    path = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies"))
    result = cli(path, "--storage", f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot open" in result.stderr and "secret" not in result.stderr


@pytest.fixture
def demo_study(tmp_path):
    """A small finished study in studies/demo/journal.log (no training needed)."""
    storage = open_storage(str(tmp_path / "studies" / "demo" / "journal.log"))
    study = optuna.create_study(study_name="demo", storage=storage)
    study.set_user_attr("metric", "val_forces_rmse")
    for value in (0.3, 0.2):
        study.add_trial(optuna.trial.create_trial(value=value, params={"x": value},
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"x": 0.9},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    return tmp_path


def test_studies_lists_trial_counts_and_best(demo_study):
    result = cli("studies", cwd=demo_study)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:7] == ["study", "complete", "pruned", "fail", "running", "waiting", "best"]
    assert row.split()[:7] == ["demo", "2", "1", "0", "0", "0", "0.2"]


def test_dashboard_serves_the_study_on_localhost(demo_study):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "nanopet.cli", "dashboard", "demo", "--port", str(port)], cwd=demo_study,
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout.readline().startswith(f"optuna-dashboard for demo (studies/demo/journal.log): http://127.0.0.1:{port}/")
        deadline, body = time.time() + 60, ""
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert '"study_name": "demo"' in body or '"study_name":"demo"' in body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_unknown_study_is_a_one_line_error(demo_study):
    result = cli("dashboard", "nope", cwd=demo_study)
    assert result.returncode == 2
    assert result.stderr.strip() == ("nanopet-tune: error: study 'nope': not found under studies/ (known: demo); "
                                     "give a study name, a journal file, or --storage URL")


def test_sqlite_storage(tmp_path):
    from tune_support import tiny_space as space_of

    from nanopet.tune import load_search_space, run

    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = run(load_search_space(space_of(tmp_path / "studies", budget={"n_trials": 2, "epochs": 1})), storage=url,
                 threads=1, out=lambda line: None)
    done = optuna.load_study(study_name="tiny", storage=open_storage(url)).get_trials()
    assert result.status == "completed" and [t.state for t in done] == [TrialState.COMPLETE] * 2
