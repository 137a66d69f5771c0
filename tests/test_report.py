"""Study reports on small real studies: files, figures, CSV against the storage, bad input, and the page
in a real headless Chromium with networking off (screenshots under build/test-artifacts/report/)."""

from __future__ import annotations

import argparse
import csv
import html
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from tune_support import REPO, tiny_space

from nanopet.cli import report as command
from nanopet.errors import InputError
from nanopet.report import report_after_search, write_page, write_report
from nanopet.report.collect import collect
from nanopet.report.importance import DOCUMENTED_ORDER, agreement, measure
from nanopet.tune import load_search_space, run
from nanopet.tune.optuna_driver.lease import identity
from nanopet.tune.storage import open_storage

ARTIFACTS = Path(os.environ.get("NANOPET_TEST_ARTIFACTS", REPO / "build" / "test-artifacts")) / "report"
CHOICES = [1.0e-3, 3.0e-3, 1.0e-2, 1.0e-6, 1.0e3]  # 1e-6 gets pruned, 1e3 fails (non-finite loss)


def search(raw) -> None:
    run(load_search_space(raw), threads=1, out=lambda line: None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Small real studies in one studies/ folder: joint (complete, pruned, failed), staged, two-objective
    (accuracy vs inference time), only failed, running (a live worker's trial), empty; plus one written
    straight through Optuna into SQLite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    studies = root / "studies"
    try:
        search(tiny_space(studies, study={"name": "joint", "sampler": {"type": "random", "seed": 2},
                                          "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0}},
                          parameters={"learning_rate": {"type": "categorical", "choices": CHOICES},
                                      "cutoff": {"type": "float", "low": 3.0, "high": 4.0, "step": 0.5}},
                          budget={"n_trials": 10, "epochs": 3}))
        search(tiny_space(studies, study={"name": "staged", "sampler": {"type": "tpe", "seed": 1, "n_startup_trials": 2}},
                          strategy={"type": "staged", "importance": ["cutoff", "learning_rate"]}, budget={"n_trials": 6}))
        search(tiny_space(studies, study={"name": "front"}, objective={"cost": "front", "cost_measure": "inference_time"},
                          parameters={"d_pet": {"type": "categorical", "choices": [8, 16]},
                                      "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                          budget={"n_trials": 4, "epochs": 1}))
        search(tiny_space(studies, study={"name": "failed"}, parameters={"learning_rate": {"type": "categorical", "choices": [1.0e3]}},
                          budget={"n_trials": 2, "epochs": 1}, strategy={"type": "joint", "enumerate": False}))  # 2 failures
        search(tiny_space(studies, study={"name": "running"}, budget={"n_trials": 2, "epochs": 1}))
    finally:
        torch.set_num_threads(threads)
    live = optuna.load_study(study_name="running", storage=open_storage(str(studies / "running" / "journal.log"), create=False))
    trial = live.ask()  # a trial whose worker (this process) is alive: the study is still running
    trial.set_user_attr("worker", identity())
    optuna.create_study(study_name="empty", storage=open_storage(str(studies / "empty" / "journal.log")))
    for name in ("joint", "staged", "front", "failed", "running", "empty"):
        write_report(name, directory=studies, out_dir=root / "reports")
    write_report("other", storage=foreign_study(root / "other.db"), out_dir=root / "reports")
    return root


def foreign_study(path: Path) -> str:
    """A study written straight through Optuna, as another driver might: no study attributes, trials with
    values, curves and timing only; int, log and JSON-categorical parameters; in SQLite."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="other", storage=url)
    heads = CategoricalDistribution(['json:{"energy": "mlp"}', "json:{}"])
    distributions = {"cutoff": FloatDistribution(3.0, 6.0), "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
                     "num_gnn_layers": IntDistribution(1, 4), "heads": heads}
    for k in range(8):
        params = {"cutoff": 3.0 + 0.4 * k, "learning_rate": 1e-4 * 1.8**k, "num_gnn_layers": 1 + k % 4, "heads": heads.choices[k % 2]}
        curve = {e: 1.0 / (1 + e) + 0.1 * ((k * 7) % 5) for e in range(3 if k % 3 else 1)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=curve[max(curve)], intermediate_values=curve,
            state=TrialState.COMPLETE if k % 3 else TrialState.PRUNED, user_attrs={"timing": {"wall": 2.0, "epochs": 1.5}}))
    return url


def stored(root: Path, name: str, study_name: str | None = None):
    storage = open_storage(str(root / "studies" / name / "journal.log"), create=False)
    return optuna.load_study(study_name=study_name or name, storage=storage)


def page(root: Path, name: str) -> str:
    return (root / "reports" / name / "index.html").read_text()


def figure_count(text: str) -> int:
    return len(re.findall(r'<div id="figure-\d+" class="plotly-graph-div"', text))


def read_csv(root: Path, name: str) -> list[dict]:
    with open(root / "reports" / name / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Files and figures


def test_report_files_figures_and_offline_page(root):
    folder = root / "reports" / "joint"
    assert {p.name for p in folder.iterdir()} >= {"index.html", "trials.csv", "summary.md", "plotly.min.js"}
    text = page(root, "joint")
    assert '<script src="plotly.min.js"></script>' in text and "cdn." not in text
    assert not re.search(r'(src|href)="https?://', text)  # nothing is fetched from the network
    assert text.count("<script src=") == 1  # plotly.js once, beside the page
    for heading in ("Optimization history", "Parameter importances", "Parallel coordinates", "Slice plots",
                    "Contour of the two most important parameters", "Learning curves", "How early the ranking forms",
                    "Compute spent", "Top 10 trials", "Failed trials"):
        assert f"<h2>{heading}" in text, heading
    assert figure_count(text) == 7  # too few completed trials to rank by epoch: a note says so
    assert "Not drawn: needs at least 4 completed trials" in text
    assert "Status: finished" in text
    assert "agrees" in text or "disagrees" in text or "reverse" in text or "unrelated" in text
    staged, front = page(root, "staged"), page(root, "front")
    assert "<h2>Best value after each stage</h2>" in staged and figure_count(staged) == 9
    assert "pairs of trials compared within each stage" in staged
    assert "<h2>Accuracy against inference time</h2>" in front and figure_count(front) == 8


def test_kendall_tau_is_scipys_tau_b_and_counts_only_pairs_within_a_stage():
    import numpy as np
    from scipy.stats import kendalltau

    from nanopet.tune.pruning import kendall_tau

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 25).astype(float)  # with ties
    b = a + rng.normal(size=25)
    assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b)[0])
    # two stages, each ranked in reverse; across the stages the order agrees (not compared)
    assert kendall_tau([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3, 4], [2, 1, 4, 3], groups=[1, 1, 2, 2]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 2, 2], [1, 2, 3, 4], groups=[1, 1, 2, 2]) is None  # tied within every stage


def ranking_study(path: Path, crossing: bool) -> str:
    """Six completed 4-epoch trials and three pruned after epoch 1, in SQLite. ``crossing``: the lower the
    learning rate, the worse a trial starts and the better it ends (short-horizon bias); else the order
    never changes."""
    from optuna.distributions import FloatDistribution

    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="ranking", storage=url)
    distributions = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    for k in range(9):
        rate = 1e-4 * 1.7**k
        start, end = (1.0 + 0.1 * (9 - k), 0.1 + 0.05 * k) if crossing else (1.0 + 0.1 * k, 0.1 + 0.05 * k)
        curve = {e: start + (end - start) * e / 3 for e in range(4 if k < 6 else 2)}
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": rate}, distributions=distributions, intermediate_values=curve,
            value=curve[3] if k < 6 else None, state=TrialState.COMPLETE if k < 6 else TrialState.PRUNED))
    return url


def test_pruning_advice_names_the_epoch_from_which_the_ranking_stays_formed():
    from nanopet.report.ranking import Ranking

    def ranked(taus, typical):
        return Ranking(trials=6, epochs=len(taus) + 1, taus=taus, stopped=pd.Series([typical] * 3), typical=typical)

    late = ranked([-0.2, 0.1, 0.7, 0.5, 0.8, 0.9], typical=1)  # well at epoch 3, not at 4, well from 5 on
    assert late.well_from == 4
    assert late.advice() == ("the values ranked the final ones well (tau >= 0.6) from epoch 5 of 7 on, so make the first pruning "
                             "decision no earlier: n_warmup_steps: 4 (median) or min_resource: 4 (successive_halving, hyperband); "
                             "or pruner: {type: ranking}, which waits for the ranking by itself")
    assert ranked([0.7, 0.8, 0.9], typical=0).advice() is None  # the pruner decided where the ranking had formed
    assert ranked([0.1, 0.7, None], typical=0).well_from is None  # tied at the last epoch: never stays formed
    assert ranked([0.1, 0.2, 0.3], typical=1).advice().startswith("no epoch before the last ranked them well")


@pytest.mark.parametrize("crossing", [True, False])
def test_early_ranking_says_whether_early_epochs_rank_the_trials(tmp_path, crossing):
    from nanopet.report import ranking

    data = collect("ranking", storage=ranking_study(tmp_path / "r.db", crossing))
    caption, figure = ranking.early_ranking(data)
    check = ranking.pruning_check(data)  # the line a search prints at its end
    taus = figure.data[0].y  # value at epochs 1..3 vs the final value
    lr_taus = figure.data[2].y  # learning rate vs value at epochs 1..3
    assert list(figure.data[1].x) == [2] and list(figure.data[1].y) == [3]  # three trials pruned after epoch 2
    assert "over 6 completed trials of 4 epochs" in caption and "half the 3 pruned trials stopped by epoch 2" in caption
    if crossing:  # the order at epochs 1-2 is the reverse of the final one; only the learning rate knew
        assert taus[0] == pytest.approx(-1.0) and taus[1] == pytest.approx(-1.0)
        assert lr_taus[0] == pytest.approx(-1.0) and "tau +1.00 (positive: lower rates end better)" in caption
        assert "barely rank the trials" in caption and "short-horizon bias" in caption
        assert "no epoch before the last ranked them well (tau >= 0.6): prune only late or not at all" in caption
        assert check.startswith("pruning check: half the 3 pruned trials stopped by epoch 2, where the completed trials' "
                                "values ranked their final ones barely (Kendall tau -1.00); lower learning rates ended better")
    else:
        assert list(taus) == pytest.approx([1.0, 1.0, 1.0])
        assert "rank the trials well" in caption and "short-horizon bias" not in caption
        assert "ranked their final ones well (Kendall tau +1.00); see" in check  # no advice needed
    # the same line ends a search, before the report's path
    lines = []
    report_after_search("ranking", tmp_path / "studies", storage=f"sqlite:///{tmp_path / 'r.db'}", out=lines.append)
    assert lines == [check, f"report: {tmp_path / 'reports' / 'ranking' / 'index.html'}"]


def test_trials_csv_has_one_row_per_trial_matching_the_storage(root):
    rows = read_csv(root, "joint")
    trials = stored(root, "joint").get_trials(deepcopy=False)
    assert len(rows) == len(trials) == 10
    for column in ("trial", "state", "value", "learning_rate", "cutoff", "epochs", "wall_s", "reason"):
        assert column in rows[0], column
    states = {row["state"] for row in rows}
    assert states == {"complete", "pruned", "fail"}
    for row, t in zip(rows, trials):
        assert int(row["number"]) == t.number and row["state"] == t.state.name.lower()
        assert float(row["learning_rate"]) == t.params["learning_rate"] and float(row["cutoff"]) == t.params["cutoff"]
        if t.values:
            assert float(row["value"]) == t.values[0]
        else:
            assert row["value"] == ""
        if t.state == TrialState.PRUNED:
            assert row["reason"] == t.user_attrs["reason"] and "pruned after epoch" in row["reason"]
            assert int(row["epochs"]) == len(t.intermediate_values)
        if "timing" in t.user_attrs:
            assert float(row["wall_s"]) == pytest.approx(t.user_attrs["timing"]["wall"])
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs:
            assert int(row["epochs"]) == t.user_attrs["epochs"] == 3
        if "duplicate_of" in t.user_attrs:
            assert int(row["epochs"]) == 0 and int(row["duplicate_of"]) == t.user_attrs["duplicate_of"]  # not trained again


def test_summary_and_header_state_the_best_and_the_gain(root):
    study = stored(root, "joint")
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    defaults = study.trials[0]
    assert defaults.user_attrs["role"] == "defaults"
    gain = 100 * (1 - best.value / defaults.value)
    sentence = (f"Best val_forces_rmse {best.value:.4g} (trial joint#{best.number}) is {gain:.1f}% lower than "
                f"the default hypers' {defaults.value:.4g}")
    assert sentence in (root / "reports" / "joint" / "summary.md").read_text()
    assert html.escape(sentence) in page(root, "joint")
    summary = (root / "reports" / "joint" / "summary.md").read_text()
    assert "## Parameter importances" in summary and "| cutoff |" in summary and "non-finite loss" in summary


def test_importances_are_optunas_ped_anova_and_ranked_against_the_docs(root):
    data = collect("joint", root / "studies")
    measured = measure(data)
    expected = optuna.importance.get_param_importances(stored(root, "joint"))
    assert measured.values == pytest.approx(expected)
    assert measured.shared == ("cutoff", "learning_rate") and measured.tau in (-1.0, 1.0)
    assert agreement(dict.fromkeys(DOCUMENTED_ORDER, 0.1))[0] == pytest.approx(1.0)
    tau, words, _ = agreement(dict.fromkeys(reversed(DOCUMENTED_ORDER), 0.1))
    assert tau == pytest.approx(-1.0) and "is the reverse of the documented order" in words
    tau, words, _ = agreement({"cutoff": 0.9, "zbl": 0.1})
    assert tau is None and "no ranking to compare" in words
    staged = measure(collect("staged", root / "studies"))  # one parameter per stage: the variance within its stage
    assert set(staged.values) == {"cutoff", "learning_rate"} and sum(staged.values.values()) == pytest.approx(1.0)


def test_staged_study_reads_every_stage(root):
    data = collect("staged", root / "studies")
    assert [s["study"] for s in data.stages] == ["staged.stage1-cutoff", "staged.stage2-learning_rate"]
    rows = read_csv(root, "staged")
    first = stored(root, "staged", "staged.stage1-cutoff").trials
    second = stored(root, "staged", "staged.stage2-learning_rate").trials
    assert len(rows) == len(first) + len(second)
    carried = [r for r in rows if r["role"] == "carried"]
    assert len(carried) == 1 and carried[0]["epochs"] == "0"  # the stage's start is the earlier best, not retrained
    best_cutoff = second[0].user_attrs["config"]["cutoff"]
    assert all(float(r["cutoff"]) == best_cutoff for r in rows if r["stage"] == "2")
    assert all(float(r["learning_rate"]) == 3.0e-3 for r in rows if r["stage"] == "1")  # base value while stage 1 ran
    for stage, trials in zip(data.stages, (first, second)):
        assert stage["best_value"] == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert "tuned in different stages" in page(root, "staged")


def test_two_objective_front_matches_optuna(root):
    data = collect("front", root / "studies")
    study = stored(root, "front")
    from nanopet.report.figures import front

    _, figure = front(data)
    on_front = next(trace for trace in figure.data if trace.name == "Pareto front")
    assert sorted(on_front.text) == sorted(f"front#{t.number}" for t in study.best_trials)
    assert "cost" in read_csv(root, "front")[0]


def test_running_study_says_so(root):
    text = page(root, "running")
    assert "Status: STILL RUNNING - 1 trial(s) in progress (running#2)" in text
    assert "No trial has beaten the default hypers yet (trial running#0, val_forces_rmse" in text
    assert [r["state"] for r in read_csv(root, "running")] == ["complete", "complete", "running"]


def test_empty_and_failed_studies_get_a_report_saying_what_is_missing(root):
    empty = page(root, "empty")
    assert "Status: EMPTY" in empty and figure_count(empty) == 0 and "Not drawn: no trials recorded yet" in empty
    assert read_csv(root, "empty") == []
    failed = page(root, "failed")
    assert figure_count(failed) == 0 and "Not drawn: no completed trial yet (2 failed)" in failed
    assert "non-finite loss" in failed and "<h2>Failed trials</h2>" in failed
    assert "No result: all 2 trials failed" in (root / "reports" / "failed" / "summary.md").read_text()


def test_command_line_and_bad_input(root, capsys):
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "joint", "--studies-dir", str(root / "studies"), "--out", str(root / "cli")])
    assert command.run(args) == 0
    assert (root / "cli" / "joint" / "index.html").is_file() and "report of joint" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"study 'nope': not found under .*known: .*joint"):
        command.run(parser.parse_args(["report", "nope", "--studies-dir", str(root / "studies")]))
    with pytest.raises(InputError, match=r"study 'jiont': not found .*\(did you mean 'joint'\?\)$"):
        write_report("jiont", directory=root / "studies", out_dir=root / "cli")
    with pytest.raises(InputError, match=r"study 'other': not in storage .*studies there: joint"):
        write_report("other", storage=str(root / "studies" / "joint" / "journal.log"), out_dir=root / "cli")
    # at the end of a search: reports/ beside the studies folder, and a problem is one line, not an exception
    lines = []
    assert report_after_search("staged", root / "studies", out=lines.append) == root / "reports" / "staged" / "index.html"
    assert report_after_search("nope", root / "studies", out=lines.append) is None
    assert lines[0].startswith("report: ") and lines[1].startswith("report not written (InputError: study 'nope'")
    # a journal file or a stage's own name work too
    path = write_report(str(root / "studies" / "front" / "journal.log"), out_dir=root / "cli")
    assert path == root / "cli" / "front" / "index.html"
    path = write_report("staged.stage2-learning_rate", directory=root / "studies", out_dir=root / "cli")
    with open(path.parent / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # that stage alone (carried-in start + 3 of the 6 trials: stage 1 took its 3 cutoffs)
    assert "than this stage&#x27;s start (the earlier stages&#x27; best)" in path.read_text()


def test_write_page_writes_plotly_once_beside_any_page(tmp_path):
    import plotly.graph_objects as go

    one = write_page(tmp_path / "losses.html", "Losses", ["a <b> line"], [("Curve: read this", go.Figure(go.Scatter(y=[1, 2]))),
                                                                          ("Table: numbers", "<table></table>")])
    write_page(tmp_path / "other.html", "Other", [], [])
    text = one.read_text()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["losses.html", "other.html", "plotly.min.js"]
    assert "a &lt;b&gt; line" in text and "<h2>Curve</h2>" in text and "read this" in text and figure_count(text) == 1


# ---------------------------------------------------------------------------------------------
# In a real browser


CHECK_FIGURES = """
return Array.from(document.querySelectorAll('.plotly-graph-div')).map(el => ({
  id: el.id,
  rendered: el.classList.contains('js-plotly-plot'),
  traces: (el.data || []).length,
  drawn: el.querySelectorAll('.scatterlayer .trace path, .scatterlayer .trace .point, .barlayer .point, '
                             + '.contourlayer path, g.parcoords .axis').length,
  width: el.getBoundingClientRect().width,
}));
"""


def chromium_driver():
    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="nanopet-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                 "--enable-unsafe-swiftshader",  # software WebGL for the parallel-coordinates plot (no GPU here)
                 "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options), profile


def test_every_figure_renders_offline_in_chromium(root):
    browser, profile = chromium_driver()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for name in ("joint", "staged", "front", "other", "failed"):
            path = root / "reports" / name / "index.html"
            browser.get(path.as_uri())
            # on a loaded machine one check straight after loading once found no Plotly yet: wait for it as for the plots
            deadline = time.monotonic() + 15
            while browser.execute_script("return typeof Plotly") != "object" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert browser.execute_script("return typeof Plotly") == "object"  # plotly.min.js from beside the page
            deadline = time.monotonic() + 15
            shown = browser.execute_script(CHECK_FIGURES)
            while not all(f["rendered"] and f["drawn"] for f in shown) and time.monotonic() < deadline:
                time.sleep(0.2)  # plots draw after the load event on a slow machine
                shown = browser.execute_script(CHECK_FIGURES)
            assert len(shown) == figure_count(path.read_text())
            for figure in shown:
                assert figure["rendered"] and figure["traces"] > 0 and figure["drawn"] > 0 and figure["width"] > 300, (name, figure)
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1280, height + 40)
            for target in (root / "reports" / name / "screenshot.png", ARTIFACTS / f"{name}.png"):
                assert browser.save_screenshot(str(target)) and target.stat().st_size > 10_000
            browser.set_window_size(1280, 1000)
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)



def test_any_driver_and_any_storage(root, tmp_path):
    """Driver-neutral: a study written straight through Optuna (no nanopet attributes) in SQLite gets every figure."""
    text = page(root, "other")
    assert figure_count(text) == 8 and "Search over cutoff, learning_rate, num_gnn_layers, heads" in text
    assert len(read_csv(root, "other")) == 8
    url = f"sqlite:///{root / 'other.db'}"
    with pytest.raises(InputError, match=r"study 'othr': not in storage .* \(did you mean 'other'\?\)"):
        write_report("othr", storage=url, out_dir=tmp_path)
    # the same study in another storage gives the same table
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="joint", from_storage=open_storage(str(root / "studies" / "joint" / "journal.log"), create=False),
                      to_storage=copy)
    assert figure_count(write_report("joint", storage=copy, out_dir=tmp_path / "reports").read_text()) == 7
    assert [r["value"] for r in read_csv(tmp_path, "joint")] == [r["value"] for r in read_csv(root, "joint")]
