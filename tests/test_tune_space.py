"""Search-space files: the shipped ones load; every invalid one is a one-line error naming the key path,
exit code 2, and nothing is written."""

from __future__ import annotations

import pytest
from tune_support import REPO, cli, tiny_space, write_space

from nanopet.cli import main
from nanopet.errors import InputError
from nanopet.runs import with_epochs
from nanopet.tune import load_search_space
from nanopet.tune.space import Driver, Strategy, parameter_path
from nanopet.tune.plan import plan


@pytest.mark.parametrize("name", ["default", "quick", "losses", "molecules"])
def test_shipped_search_spaces_load(name):
    space = load_search_space(REPO / "search_spaces" / f"{name}.yaml", check_data=False)
    assert space.parameters and space.budget.epochs >= 1
    for stage in plan(space):
        assert set(stage.parameters) <= set(space.parameters)
    space.options_for(space.defaults())  # the defaults trial is a valid configuration


def test_default_follows_the_documented_order_of_importance():
    space = load_search_space(REPO / "search_spaces" / "default.yaml", check_data=False)
    order = [name for stage in space.strategy.stages for name in stage]
    assert order == ["cutoff", "learning_rate", "batch_size", "d_pet", "num_gnn_layers", "num_attention_layers"]
    assert space.strategy.type == "staged"
    stages = plan(space)
    assert sum(stage.n_trials for stage in stages) == space.budget.n_trials
    # cutoff (11 values on its 0.25 A step) and the four discrete stages try each value once: their shares by
    # importance (17, 11, 9, 6, 3 of 60) would repeat values; a later stage's base value is the carried-in best
    # (3 of 4 values to train); the rest goes to the continuous learning_rate
    assert [(stage.n_trials, stage.grid, stage.carried, stage.enumerated) for stage in stages] == [
        (11, 11, False, True), (37, None, True, False), (3, 4, True, True), (3, 4, True, True), (3, 4, True, True),
        (3, 4, True, True)]


def test_stage_split_by_importance_equal_and_weights():
    stages = (("a",), ("b",), ("c",))
    assert Strategy("staged", stages, "importance").stage_trials(12) == [6, 4, 2]
    assert Strategy("staged", stages, "equal").stage_trials(10) == [4, 3, 3]
    assert Strategy("staged", stages, (1, 1, 8)).stage_trials(10) == [2, 2, 6]  # at least 2 per stage
    # a stage with fewer configurations than its share gets that many; the rest is split over the others by weight
    assert Strategy("staged", stages, "importance").stage_trials(12, [2, None, None]) == [2, 7, 3]
    assert Strategy("staged", stages, "importance").stage_trials(12, [2, None, 3]) == [2, 7, 3]
    assert Strategy("staged", stages, "importance").stage_trials(12, [None, 2, 1]) == [9, 2, 1]
    assert Strategy("staged", stages, "importance").stage_trials(12, [3, 2, 1]) == [3, 2, 1]  # fewer in all


def test_parameter_names_resolve_to_option_paths():
    assert parameter_path("cutoff") == ("architecture", "model", "cutoff")
    assert parameter_path("learning_rate") == ("architecture", "training", "learning_rate")
    assert parameter_path("loss.weights.forces") == ("architecture", "training", "loss", "weights", "forces")
    assert parameter_path("heads.energy") == ("architecture", "model", "heads", "energy")
    assert parameter_path("architecture.training.loss.type") == ("architecture", "training", "loss", "type")


def test_options_for_sets_values_including_mappings(tmp_path):
    raw = tiny_space(tmp_path, parameters={
        "heads": {"type": "categorical", "choices": [{"energy": "linear"}, {"energy": "mlp"}]},
        "loss.type": {"type": "categorical", "choices": ["mse", "huber"]},
        "loss.deltas.forces": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "zbl": {"type": "categorical", "choices": [False, True]},
    })
    space = load_search_space(raw, check_data=False)
    options = space.options_for({"heads": {"energy": "linear"}, "loss.type": "huber", "loss.deltas.forces": 0.1, "zbl": True})
    assert options["architecture"]["model"]["heads"] == {"energy": "linear"}
    assert options["architecture"]["training"]["loss"]["deltas"] == {"forces": 0.1}
    assert options["architecture"]["model"]["zbl"] is True
    assert options["architecture"]["training"]["num_epochs"] == 2  # budget.epochs
    # every trial trains as the first budget.epochs of retrain's run (10 x budget.epochs) ...
    assert options["architecture"]["training"]["scheduler_epochs"] == 20
    # ... which trains on a schedule of its own; a value the user gives is kept
    assert with_epochs(options, 5)["architecture"]["training"]["scheduler_epochs"] is None
    raw["architecture"]["training"]["scheduler_epochs"] = 7
    assert load_search_space(raw, check_data=False).options_for({})["architecture"]["training"]["scheduler_epochs"] == 7
    assert space.defaults() == {"loss.type": "mse", "zbl": False}  # no default delta, heads {} not among the choices
    assert space.max_cutoff == 3.5


def test_learning_rate_scaling_moves_the_chosen_learning_rate_with_a_later_batch_size(tmp_path):
    def space(scaling, importance):
        return load_search_space(tiny_space(tmp_path, strategy={"type": "staged", "importance": importance, "learning_rate_scaling": scaling},
                                            parameters={"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                                                        "batch_size": {"type": "categorical", "choices": [2, 6, 24]},
                                                        "d_pet": {"type": "categorical", "choices": [8, 16]}}), check_data=False)

    square_root = space("sqrt", ["learning_rate", "batch_size", "d_pet"])
    assert square_root.trial_values({"learning_rate": 4.0e-3}, {"batch_size": 24}) == {"learning_rate": pytest.approx(8.0e-3), "batch_size": 24}
    # the learning rate was chosen at the base batch size 6; a fixed batch size is the reference where there is one
    assert square_root.trial_values({"learning_rate": 4.0e-3, "batch_size": 24}, {"d_pet": 16})["learning_rate"] == 4.0e-3
    assert square_root.trial_values({}, {"learning_rate": 5.0e-3}) == {"learning_rate": 5.0e-3}  # the stage that tunes it
    assert space("linear", ["learning_rate", "batch_size", "d_pet"]).trial_values(
        {"learning_rate": 4.0e-3}, {"batch_size": 2})["learning_rate"] == pytest.approx(4.0e-3 / 3)
    # batch sizes first: each moves the base learning rate (3e-3 at batch 6), which the next stage then tunes
    first = space("sqrt", ["batch_size", "learning_rate", "d_pet"])
    assert first.trial_values({}, {"batch_size": 24})["learning_rate"] == pytest.approx(6.0e-3)
    assert space("none", ["learning_rate", "batch_size", "d_pet"]).trial_values({"learning_rate": 4.0e-3}, {"batch_size": 24}) == {
        "learning_rate": 4.0e-3, "batch_size": 24}
    assert square_root.fingerprint() != space("none", ["learning_rate", "batch_size", "d_pet"]).fingerprint()


def test_defaults_are_moved_into_the_range(tmp_path):
    raw = tiny_space(tmp_path, parameters={"d_pet": {"type": "int", "low": 16, "high": 32, "step": 8},
                                           "cutoff": {"type": "float", "low": 3.0, "high": 4.5, "step": 0.5}})
    space = load_search_space(raw, check_data=False)
    assert space.defaults() == {"d_pet": 16, "cutoff": 3.5}
    assert space.max_cutoff == 4.5


INVALID = [
    ({"studdy": {}}, "studdy: unknown key (did you mean 'study'?)"),
    ({"parameters": {"learnig_rate": {"type": "float", "low": 1, "high": 2}}},
     "parameters.learnig_rate: unknown hyperparameter (did you mean 'learning_rate'?)"),
    ({"parameters": {"cutoff": {"type": "float", "low": 3, "high": 4, "logg": True}}},
     "parameters.cutoff.logg: unknown key (did you mean 'log'?)"),
    ({"parameters": {"cutoff": {"type": "float", "low": 5, "high": 4}}}, "parameters.cutoff: low (5) > high (4)"),
    ({"parameters": {"learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
     "parameters.learning_rate.log: a log scale needs low > 0"),
    ({"parameters": {"d_pet": {"type": "float", "low": 8, "high": 16}}}, "parameters.d_pet: value 8.0 is invalid"),
    ({"parameters": {"d_pet": {"type": "int", "low": "eight", "high": 16}}}, "parameters.d_pet.low: expected a whole number"),
    ({"parameters": {"d_pet": {"type": "integer", "low": 8, "high": 16}}}, "parameters.d_pet.type: must be float, int or categorical"),
    ({"parameters": {"d_pet": {"type": "categorical", "choices": []}}}, "parameters.d_pet.choices: empty"),
    ({"parameters": {"num_epochs": {"type": "int", "low": 1, "high": 4}}}, "parameters.num_epochs: num_epochs is not tuned"),
    ({"parameters": {"loss.weights.force": {"type": "float", "low": 0, "high": 1}}},
     "parameters.loss.weights.force: unknown hyperparameter (did you mean 'loss.weights.forces'?)"),
    ({"training_set": "missing.xyz"}, "training_set.systems: missing.xyz: file not found"),
    ({"study": {"sampler": {"type": "tpee"}}}, "study.sampler.type: must be tpe, random, gp or cmaes, got 'tpee' (did you mean 'tpe'?)"),
    ({"strategy": {"type": "joint", "enumerate": "yes"}}, "strategy.enumerate: expected true or false, got 'yes'"),
    ({"study": {"pruner": {"type": "median", "n_startup": 3}}}, "study.pruner.n_startup: unknown key"),
    ({"objective": {"metric": "val_force_rmse"}}, "objective.metric: must be val_rmse_gmean, val_loss, val_energy_rmse, "
     "val_energy_mae, val_forces_rmse, val_forces_mae, val_virial_rmse, val_virial_mae, val_stress_rmse or val_stress_mae, "
     "got 'val_force_rmse' (did you mean 'val_forces_rmse'?)"),
    ({"objective": {"cost": "front"}, "study": {"pruner": {"type": "median"}}}, "study.pruner: Optuna cannot prune a two-objective study"),
    ({"strategy": {"type": "staged"}, "budget": {"n_trials": 3}}, "budget.n_trials: 3 is too few for 2 stages"),
    ({"strategy": {"type": "staged", "importance": ["cutoff", "batch_size"]}}, "strategy.importance[1]: 'batch_size' is not under parameters"),
    ({"budget": {"epochs": 0}}, "budget.epochs: must be positive"),
    ({"strategy": {"type": "staged", "learning_rate_scaling": "square"}},
     "strategy.learning_rate_scaling: must be none, sqrt or linear, got 'square' (did you mean 'sqrt'?)"),
    ({"strategy": {"type": "staged", "learning_rate_scaling": "sqrt"}},  # no batch_size under parameters
     "strategy.learning_rate_scaling: sqrt moves the learning rate with a later stage's batch size; it needs type: staged"),
    ({"strategy": {"type": "staged", "importance": [["learning_rate", "batch_size"], "cutoff"], "learning_rate_scaling": "sqrt"},
      "parameters": {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2},
                     "batch_size": {"type": "categorical", "choices": [2, 6]}, "cutoff": {"type": "float", "low": 3.0, "high": 4.0}}},
     "strategy.learning_rate_scaling: batch_size and learning_rate are in the same stage (importance[0])"),
    ({"budget": {"equal": "seconds"}}, "budget.equal: must be epochs, steps or time, got 'seconds'"),
    ({"budget": {"equal": "time", "data_shares": [0.5, 1]}}, "budget.equal: time sizes each trial's epochs"),
    ({"strategy": {"type": "joint", "min_improvement": 1.5}}, "strategy.min_improvement: must be in [0, 1), got 1.5"),
    ({"architecture": {"training": {"scheduler": "step"}}}, "architecture.training.scheduler: must be cosine or plateau"),
    ({"architecture": {"model": {"d_pett": 8}}}, "architecture.model.d_pett: unknown option (did you mean 'd_pet'?)"),
    ({"driver": "rey"}, "driver.type: must be optuna or ray, got 'rey' (did you mean 'ray'?)"),
    ({"driver": {"type": "ray", "gpu_per_trial": 1}}, "driver.gpu_per_trial: unknown key (did you mean 'gpus_per_trial'?)"),
    ({"driver": {"type": "ray", "gpus_per_trial": 1.5}}, "driver.gpus_per_trial: expected 0, a fraction of one GPU"),
    ({"driver": {"address": "auto"}}, "driver.address: only with driver type ray"),
]


@pytest.mark.parametrize("change,message", INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_search_space_is_one_line_error_exit_2_nothing_written(tmp_path, capsys, change, message):
    raw = tiny_space(tmp_path / "studies", **change)
    path = write_space(tmp_path / "space.yaml", raw)
    code = main([str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nanopet-tune: error: ")
    assert message in err, err
    assert not (tmp_path / "studies").exists()


def test_invalid_search_space_via_the_real_command(tmp_path):
    path = write_space(tmp_path / "space.yaml", tiny_space(tmp_path / "studies", budget={"n_trials": 0}))
    result = cli(path, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "nanopet-tune: error: budget.n_trials: must be positive, got 0"
    assert not (tmp_path / "studies").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("budget:\n  n_trials: [1\n")
    with pytest.raises(InputError, match="space.yaml: line"):
        load_search_space(path)


def test_a_study_without_a_pruner_prunes_from_a_fifth_of_its_epochs(tmp_path):
    """The first epochs are a plateau on which trials rank by chance, so the default pruner's warm-up grows
    with the budget; a two-objective study is never pruned."""
    def pruner(**sections):
        raw = tiny_space(tmp_path, **sections)
        raw["study"].pop("pruner")
        return load_search_space(raw).study.pruner

    assert pruner(budget={"epochs": 100}) == {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 20}
    assert pruner(budget={"epochs": 27})["n_warmup_steps"] == 5
    assert pruner(budget={"epochs": 3})["n_warmup_steps"] == 2
    assert pruner(budget={"epochs": 100}, objective={"metric": "val_forces_rmse", "cost": "front"}) == {"type": "none"}
    # a pruner given is taken as given
    assert load_search_space(tiny_space(tmp_path, study={"pruner": {"type": "median"}})).study.pruner == {"type": "median"}


def test_driver_section(tmp_path):
    assert load_search_space(tiny_space(tmp_path)).driver == Driver()
    assert load_search_space(tiny_space(tmp_path, driver="ray")).driver == Driver("ray")
    space = load_search_space(tiny_space(tmp_path, driver={"type": "ray", "address": "auto", "gpus_per_trial": 0.25}))
    assert space.driver == Driver("ray", "auto", 1.0, 0.25)
    assert space.replace(driver={"cpus_per_trial": 2, "address": None}).driver == Driver("ray", "auto", 2.0, 0.25)
    assert space.replace(driver={"type": "optuna"}).driver == Driver()  # --driver optuna drops the ray settings
    assert space.fingerprint() == load_search_space(tiny_space(tmp_path)).fingerprint()  # a study may change driver


def test_an_enumerated_later_stage_counts_its_carried_in_start(tmp_path):
    # stage 2 has 3 cutoffs; it starts from stage 1's best at the base cutoff 3.5: 2 to train, the rest to stage 1
    raw = tiny_space(tmp_path, strategy={"type": "staged", "importance": ["learning_rate", "cutoff"]}, budget={"n_trials": 8})
    first, second = plan(load_search_space(raw))
    assert (first.n_trials, first.grid, first.enumerated) == (6, None, False)
    assert (second.n_trials, second.grid, second.carried, second.enumerated) == (2, 3, True, True)


def test_an_enumerated_stage_ends_when_every_configuration_is_taken_not_when_copies_fill_its_budget(tmp_path):
    # two workers drew the same configuration at once: one copied the other; the third configuration is still due
    import optuna

    from nanopet.tune.params import distribution
    from nanopet.tune.plan import remaining

    raw = tiny_space(tmp_path, parameters={"cutoff": {"type": "float", "low": 3.0, "high": 4.0, "step": 0.5}},
                     budget={"n_trials": 3})
    space = load_search_space(raw)
    (stage,) = plan(space)
    assert stage.enumerated and stage.grid == 3
    study = optuna.create_study()
    cutoff = {"cutoff": distribution(space.parameters["cutoff"])}
    for value, attrs in ((3.5, {}), (3.0, {}), (3.0, {"duplicate_of": 1})):
        study.add_trial(optuna.trial.create_trial(params={"cutoff": value}, distributions=cutoff, value=1.0, user_attrs=attrs))
    assert remaining(stage, study.get_trials()) == 1
    study.add_trial(optuna.trial.create_trial(params={"cutoff": 4.0}, distributions=cutoff, value=1.0))
    assert remaining(stage, study.get_trials()) == 0
    study.ask()  # a worker asked, its parameters not drawn yet
    assert remaining(stage, study.get_trials()) == 0


def test_a_stage_keeps_its_starting_values_when_its_best_is_within_the_noise(tmp_path):
    import optuna
    from optuna.trial import TrialState, create_trial

    from nanopet.tune.studies import chosen_trial, chosen_values
    from nanopet.tune.params import distribution

    space = load_search_space(tiny_space(tmp_path, strategy={"type": "joint", "min_improvement": 0.03}))
    stage = plan(space)[0]
    distributions = {name: distribution(space.parameters[name]) for name in stage.parameters}

    def study_with(values):
        study = optuna.create_study()
        for k, value in enumerate(values):
            study.add_trial(create_trial(state=TrialState.COMPLETE, values=[value], distributions=distributions,
                                         params={"learning_rate": 1e-3 * (k + 1), "cutoff": 3.5},
                                         user_attrs={"role": "defaults"} if k == 0 else {}))
        return study

    close = study_with([1.0, 0.98, 1.2])  # the best is 2% better than the defaults: within 3%
    values, trial, line = chosen_values(space, stage, {}, close)
    assert trial.number == 0 and values["learning_rate"] == pytest.approx(1e-3)
    assert "within 3% of the starting" in line and chosen_trial(close).number == 0
    clear = study_with([1.0, 0.95, 1.2])  # 5% better: chosen
    values, trial, line = chosen_values(space, stage, {}, clear)
    assert trial.number == 1 and values["learning_rate"] == pytest.approx(2e-3) and "5.0% better than the starting" in line
    assert chosen_trial(clear).number == 1
    # val_rmse_gmean 1 is the score of predicting each target's mean: a start above it (1.16, noise on the force
    # plateau) does not make a best of 1.0 a 14% gain
    gmean = load_search_space(tiny_space(tmp_path, objective={"metric": "val_rmse_gmean"},
                                         strategy={"type": "joint", "min_improvement": 0.03}))
    values, trial, line = chosen_values(gmean, plan(gmean)[0], {}, study_with([1.16, 1.0, 1.3]))
    assert trial.number == 0 and "no better than predicting each target's mean" in line
    # 10% below the no-skill score: learned something, chosen
    values, trial, line = chosen_values(gmean, plan(gmean)[0], {}, study_with([1.16, 0.9, 1.3]))
    assert trial.number == 1 and "22.4% better than the starting" in line
    # a metric in units (this space's val_forces_rmse) has no such score: the raw values decide
    values, trial, line = chosen_values(space, stage, {}, study_with([1.16, 1.0, 1.3]))
    assert trial.number == 1


def test_budget_equal_gives_each_trial_the_base_hypers_steps_or_time(tmp_path):
    from nanopet.tune.trial import EpochBudget

    class Sized:
        def __init__(self, n):
            self.train = [None] * n

    raw = tiny_space(tmp_path, budget={"epochs": 10, "equal": "steps"},
                     parameters={"batch_size": {"type": "categorical", "choices": [2, 6, 24]}})
    space = load_search_space(raw)
    options = lambda batch: space.options_for({"batch_size": batch})  # noqa: E731
    budget = EpochBudget(space)
    # 18 training structures in batches of 6 (the base): 3 steps an epoch, 30 in 10 epochs
    assert budget(options(6), Sized(18))[0] == 10
    assert budget(options(2), Sized(18))[0] == 3  # 9 steps an epoch
    assert budget(options(24), Sized(18))[0] == 30  # one step an epoch
    seconds = {6: 1.0, 2: 4.0, 24: 0.05}
    timed = EpochBudget(load_search_space(tiny_space(tmp_path, budget={"epochs": 10, "equal": "time"},
                                                     parameters=raw["parameters"])),
                        measure=lambda o, data: seconds[o["architecture"]["training"]["batch_size"]])
    assert timed(options(6), Sized(18))[0] == 10  # the base hypers: budget.epochs, nothing measured
    epochs, measured, note = timed(options(2), Sized(18))
    assert (epochs, measured) == (2, 4.0) and "at 4 s an epoch" in note  # round(10 * 1 / 4)
    assert timed(options(24), Sized(18))[0] == 100  # 200 capped at 10 x budget.epochs


def test_trial_epochs_report_each_step_of_the_budget_once():
    from nanopet.tune.trial import TrialEpochs

    class Engine:
        def __init__(self):
            self.reports, self.questions = [], []

        def report(self, step, value, metrics, best):
            self.reports.append(step)

        def should_stop(self, step, value, where=None):
            self.questions.append((step, where))

    class Space:
        budget = type("Budget", (), {"epochs": 10, "data_shares": None})()
        objective = type("Objective", (), {"metric": "val_loss", "value": staticmethod(lambda metric, cost: metric)})()

    for epochs, reports in ((10, list(range(10))), (4, list(range(10))), (25, list(range(10)))):
        engine = Engine()
        on_epoch = TrialEpochs(Space(), engine, rules=[], epochs=epochs)
        for epoch in range(epochs):
            on_epoch(epoch, {"val_loss": 1.0 / (epoch + 1)})
        assert engine.reports == reports, epochs
        # the pruner is asked once per epoch that reached a new step, at that step, except the last (the trial is done)
        assert [q[0] for q in engine.questions] == {10: list(range(9)), 4: [1, 4, 6], 25: list(range(9))}[epochs]
    # 4 epochs over a budget of 10: the last step is reached by the last epoch only
    engine = Engine()
    on_epoch = TrialEpochs(Space(), engine, rules=[], epochs=4)
    for epoch in range(3):
        on_epoch(epoch, {"val_loss": 1.0})
    assert engine.reports == list(range(7)) and engine.questions[-1] == (6, "after epoch 3/4 (7/10 of the budget)")
