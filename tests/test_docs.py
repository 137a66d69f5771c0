"""The documentation: README.md and the tutorial run as written, and the Sphinx site builds without a warning.

Every fenced ``bash`` and ``python`` block of README.md and docs/tutorial.md is run for real, in a temporary
folder holding a copy of ``search_spaces/``, with these exceptions, each stated where it is handled:
- ``pip install ...`` is checked with ``pip install --dry-run --no-deps`` in the repository (a real install
  into this environment would replace it; ``.ci/run`` performs the real one in a fresh venv);
- ``python -m pytest -q`` is not run (it is the command that runs this test; ``.ci/run`` runs it);
- ``nanopet-tune dashboard ...`` serves until stopped: it is started with ``--port`` set to a free port (8080 may be
  taken by another test run), checked to answer HTTP, then stopped.
Nothing is shrunk: the searches, the retrain and the MD run at the sizes the documents show.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced bash and python block."""
    return [(m[1], m[2]) for m in FENCE.finditer(path.read_text())]


def commands(text: str) -> list[str]:
    """The commands of a bash block: one per line, comments and blank lines dropped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dashboard(command: str, cwd: Path, env: dict) -> None:
    port = free_port()
    argv = shlex.split(command) + ["--port", str(port)]
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, f"{command} exited: {process.stdout.read()}"
                assert time.time() < deadline, f"{command}: nothing answers on port {port} after 60 s"
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_command(command: str, cwd: Path, env: dict) -> str:
    if command.startswith("pip install"):
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", *shlex.split(command)[2:]]
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elif command == "python -m pytest -q":
        return "not run: the test command runs this test"
    elif shlex.split(command)[:2] == ["nanopet-tune", "dashboard"]:
        run_dashboard(command, cwd, env)
        return "served"
    else:
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def run_blocks(path: Path, cwd: Path) -> list[str]:
    """Run the bash and python blocks of a document in order in ``cwd``; the commands run, in order."""
    env, ran = environment(), []
    for number, (language, text) in enumerate(blocks(path)):
        if language == "python":
            script = cwd / f"{path.stem}-block{number}.py"
            script.write_text(text)
            run_command(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", cwd, env)
            ran.append(text)
        else:
            for command in commands(text):
                run_command(command, cwd, env)
                ran.append(command)
    return ran


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "search_spaces", tmp_path / "search_spaces")
    return tmp_path


def test_readme_is_one_or_two_screens():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"


def test_no_development_round_labels_in_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "grep", "-i", "-n", "-E", "session [0-9]+"], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout == "", f"results dated by a development round instead of a version or commit:\n{result.stdout}"


def test_readme_commands_are_in_the_tutorial():
    """The tutorial runs the README's path (so running the tutorial runs those commands); the rest runs below."""
    tutorial = {command for language, text in blocks(TUTORIAL) if language == "bash" for command in commands(text)}
    tutorial_python = [text for language, text in blocks(TUTORIAL) if language == "python"]
    path_block = [text for language, text in blocks(README) if "nanopet-tune init" in text]
    assert path_block, "README.md has no block with the user's path (nanopet-tune init)"
    missing = [c for c in commands(path_block[0]) if c not in tutorial]
    assert not missing, f"README commands the tutorial does not run: {missing}"
    for language, text in blocks(README):
        if language == "python":
            assert text in tutorial_python, "README's python block is not in the tutorial"


@pytest.mark.slow
def test_readme_commands_run(workdir):
    """README's blocks other than the user's path (which the tutorial test runs): install, quickstart, tests."""
    env, ran = environment(), []
    for language, text in blocks(README):
        if language == "bash" and "nanopet-tune init" not in text:
            for command in commands(text):
                run_command(command, workdir, env)
                ran.append(command)
    assert any(c.startswith("pip install") for c in ran)
    assert any(c.startswith("nanopet-tune search_spaces/") for c in ran)
    assert (workdir / "reports" / "quick" / "index.html").exists()


@pytest.mark.slow
def test_tutorial_runs_end_to_end(workdir):
    ran = run_blocks(TUTORIAL, workdir)
    assert any(c.startswith("nanopet-tune init") for c in ran)
    assert any(c.startswith("nanopet-tune retrain") for c in ran)
    assert (workdir / "model.pt").exists()
    assert (workdir / "reports" / "data" / "index.html").exists()
    assert (workdir / "studies" / "data" / "best" / "summary.yaml").exists()


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"),
                             str(tmp_path / "html")], cwd=ROOT, env=environment(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    # docutils reports some markup problems (e.g. a help text's "*" read as emphasis) without failing -W
    assert "(WARNING/" not in result.stderr and "(ERROR/" not in result.stderr, result.stderr[-5000:]
    print(f"docs built in {time.time() - started:.1f} s")
    html = tmp_path / "html"
    # the generated reference holds every command, every default-hypers option and every results file
    from nanopet.cli import SUBCOMMANDS
    from nanopet.schema.hypers import DOCS

    def text(page: Path) -> str:
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page.read_text()))

    cli = text(html / "reference" / "cli.html")
    for command in SUBCOMMANDS:
        assert f"nanopet-tune {command}" in cli, f"command {command} missing from the CLI reference"
    options = text(html / "_generated" / "options.html")
    for path in DOCS:
        assert path.rsplit(".", 1)[-1] in options, f"option {path} missing from the options reference"
    benchmarks = text(html / "_generated" / "benchmarks.html")
    for result_file in (ROOT / "benchmarks" / "results").glob("*.txt"):
        assert result_file.name in benchmarks, f"{result_file.name} missing from the benchmarks page"
    api = text(html / "reference" / "api.html")
    for name in ("nanopet.train", "nanopet.NanoPETCalculator", "nanopet.tune.run"):
        assert name in api, f"{name} missing from the API reference"
