"""Parameters as Optuna distributions, the form both drivers record trials in: ``distribution``, ``suggest`` (sample
or take the enqueued value), and ``encode``/``decode`` (a non-scalar choice, e.g. ``heads: {energy: linear}``, travels as
JSON)."""

from __future__ import annotations

import json

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nanopet.tune.space import Parameter


SCALARS = (type(None), bool, int, float, str)


def encode(value):
    return value if isinstance(value, SCALARS) else "json:" + json.dumps(value, sort_keys=True)


def decode(value):
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def distribution(parameter: Parameter):
    if parameter.type == "categorical":
        return CategoricalDistribution([encode(c) for c in parameter.choices])
    if parameter.type == "int":
        return IntDistribution(int(parameter.low), int(parameter.high), log=parameter.log, step=int(parameter.step or 1))
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log, step=parameter.step)


def suggest(trial: optuna.Trial, parameter: Parameter):
    """Sample (or take the enqueued value of) one parameter; returns the value the options get."""
    d = distribution(parameter)
    if parameter.type == "categorical":
        return decode(trial.suggest_categorical(parameter.name, d.choices))
    if parameter.type == "int":
        return trial.suggest_int(parameter.name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(parameter.name, d.low, d.high, step=d.step, log=d.log)
