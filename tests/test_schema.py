"""The typed schema (nanopet/schema): defaults and docs from default-hypers.yaml, one-line errors with the key path,
and the JSON Schema that `nanopet-tune schema options|space` prints for editors."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from tune_support import REPO

from nanopet.cli import main
from nanopet.errors import InputError
from nanopet.schema import Options, SearchSpaceFile, validate
from nanopet.schema.hypers import DOCS, HYPERS, Model, Training, documented


def printed_schema(capsys, kind: str) -> jsonschema.Draft202012Validator:
    assert main(["schema", kind]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_the_json_schemas_accept_the_shipped_files_and_reject_a_typo(capsys):
    space, options = printed_schema(capsys, "space"), printed_schema(capsys, "options")
    assert SHIPPED
    for path in SHIPPED:
        raw = yaml.safe_load(path.read_text())
        assert not list(space.iter_errors(raw)), path
        validate(SearchSpaceFile, raw)  # the validator agrees
    raw = yaml.safe_load((REPO / "options.yaml").read_text())
    assert not list(options.iter_errors(raw))
    validate(Options, raw)

    quick = yaml.safe_load((REPO / "search_spaces" / "quick.yaml").read_text())
    for typo in ({"studdy": {}}, {"study": {**quick["study"], "pruner": {"type": "median", "n_startup": 3}}},
                 {"parameters": {"learnig_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2}}},
                 {"architecture": {"model": {"d_pett": 8}}}, {"budget": {"equal": "seconds"}}):
        assert list(space.iter_errors({**quick, **typo})), typo
    assert list(options.iter_errors({**raw, "architecture": {"training": {"learning_rat": 1.0e-3}}}))
    assert not list(options.iter_errors({**raw, "compare_losses": {"types": ["mse", "huber"], "seeds": 2}}))


def test_defaults_and_docs_are_default_hypers_yaml():
    values, docs = documented()
    assert values == HYPERS and docs == DOCS
    for section, model in (("model", Model), ("training", Training)):
        assert list(model.model_fields) == list(HYPERS[section])
        for key, field in model.model_fields.items():
            assert field.default == HYPERS[section][key]
            assert field.description == DOCS.get(f"{section}.{key}")
    assert Model.model_fields["cutoff"].description.startswith("A; neighbour-list radius")
    # a comment continued on the lines below its key is one doc
    assert Training.model_fields["scheduler"].description.endswith("(scheduler_patience, scheduler_factor)")
    assert DOCS["training.loss.reduction"].startswith("mean | sum")


@pytest.mark.parametrize("options, message", [
    ({"sed": 1}, "sed: unknown option (did you mean 'seed'?); known: seed, device, base_precision, architecture"),
    ({}, "training_set: missing (the training data: a file (training_set: data.xyz)"),
    ({"base_precision": 16}, "base_precision: must be 32 or 64, got 16"),
    ({"architecture": {"model": {"d_pet": 30}}}, "architecture.model.d_pet: must be divisible by num_heads (4), got 30"),
    ({"architecture": {"model": {"num_heads": "two"}}}, "architecture.model.num_heads: expected an integer, got 'two'"),
    ({"architecture": {"training": {"warmup_fraction": 1}}}, "architecture.training.warmup_fraction: must be in [0, 1), got 1"),
    ({"architecture": {"training": {"loss": {"reduction": "summ"}}}},
     "architecture.training.loss.reduction: must be mean or sum, got 'summ' (did you mean 'sum'?)"),
    ({"architecture": {"training": {"loss": {"deltas": {"force": 0.1}}}}},
     "architecture.training.loss.deltas.force: unknown loss term (did you mean 'forces'?); known: energy, forces, virial"),
    ({"architecture": {"training": {"atoms_per_pass": 0}}},
     "architecture.training.atoms_per_pass: must be auto or a positive integer, got 0"),
    ({"validation_set": 1.5}, "validation_set: must be in [0, 1), got 1.5"),
    ({"training_set": {"systems": {"builtin": "emt-alloy", "n": 0}}}, "training_set.systems.n: must be >= 1, got 0"),
    ({"training_set": [{"systems": "a.xyz", "targets": {"energy": {"forces": {"kye": "f"}}}}]},
     "training_set[0].targets.energy.forces.kye: unknown key (did you mean 'key'?)"),
])
def test_a_bad_options_file_is_one_line_naming_the_key_path(options, message):
    options = {"training_set": "data.xyz", **options} if options else options
    with pytest.raises(InputError) as error:
        validate(Options, options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
