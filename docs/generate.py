"""Write the generated reference pages of the documentation (called by conf.py at every build).

Nothing here is typed by hand: the options and their one-line docs come from ``nanopet/default-hypers.yaml``, the
file formats from the JSON Schema of ``nanopet.schema``, the benchmark pages from ``benchmarks/results/*.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return f"`{text}`" if text != "" else '`""`'


def type_of(prop: dict) -> str:
    """A JSON Schema property's type in a few words."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(code(v) for v in prop["enum"])
    if "const" in prop:
        return code(prop["const"])
    if "anyOf" in prop or "oneOf" in prop:
        return " or ".join(dict.fromkeys(type_of(p) for p in prop.get("anyOf", prop.get("oneOf")))) or "any"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {type_of(prop.get('items', {}))}"
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"mapping to {type_of(prop['additionalProperties'])}"
    bounds = [f"{word} {prop[key]}" for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                        ("maximum", "<="), ("exclusiveMaximum", "<")) if key in prop]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def schema_tables(schema: dict, sections: list[str]) -> list[str]:
    """One table per definition named in ``sections`` (in that order), then the rest of the definitions."""
    defs = schema.get("$defs", {})
    order = [s for s in sections if s in defs] + sorted(set(defs) - set(sections))
    lines = []
    for name in order:
        definition = defs[name]
        lines += [f"### {name}", "", definition.get("description", "").strip(), ""]
        props = definition.get("properties", {})
        if not props:
            lines += [f"Type: {type_of(definition)}", ""]
            continue
        required = set(definition.get("required", []))
        lines += ["| key | type | default | what |", "| --- | --- | --- | --- |"]
        for key, prop in props.items():
            default = "required" if key in required else code(prop.get("default", None))
            lines.append(f"| `{key}` | {cell(type_of(prop))} | {cell(default)} | {cell(prop.get('description', ''))} |")
        lines.append("")
    return lines


def top_level(schema: dict) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| key | type | default | what |", "| --- | --- | --- | --- |"]
    for key, prop in schema["properties"].items():
        default = "required" if key in required else code(prop.get("default", None))
        lines.append(f"| `{key}` | {cell(type_of(prop))} | {cell(default)} | {cell(prop.get('description', ''))} |")
    return lines + [""]


def options_page() -> str:
    from nanopet.schema.hypers import DEFAULT_HYPERS_FILE, documented

    values, docs = documented(DEFAULT_HYPERS_FILE)
    lines = ["# Hyperparameters (`default-hypers.yaml`)", "",
             "Generated at build time from `nanopet/default-hypers.yaml`, the one place where each hyperparameter's "
             "default and its one-line documentation (the comment after the key) live. In an options file or a search "
             "space they sit under `architecture.model` and `architecture.training`; a search space names them by "
             "their key (`cutoff`, `learning_rate`) or a dotted path (`loss.weights.forces`).", ""]

    def rows(mapping: dict, prefix: str):
        for key, value in mapping.items():
            path = f"{prefix}.{key}"
            if isinstance(value, dict) and value and f"{path}" not in docs:
                yield from rows(value, path)
            else:
                yield path, value, docs.get(path, "")

    for section in values:
        lines += [f"## `architecture.{section}`", "", "| option | default | what |", "| --- | --- | --- |"]
        for path, value, doc in rows(values[section], section):
            name = path.split(".", 1)[1]
            lines.append(f"| `{name}` | {cell(code(value))} | {cell(doc)} |")
        lines.append("")
    return "\n".join(lines)


def format_page(kind: str) -> str:
    from nanopet.schema import json_schema

    schema = json_schema(kind)
    title = {"options": "Options file: every key", "space": "Search-space file: every key"}[kind]
    sections = (["Architecture", "Model", "Training", "Loss", "Weights", "Deltas", "Dataset", "Systems", "Builtin",
                 "Targets", "Energy", "Gradient"] if kind == "options" else
                ["Study", "Objective", "Budget", "Strategy", "Parameters", "FloatRange", "IntRange", "Choices", "Driver",
                 "TPE", "RandomSampler", "GP", "CMAES", "Median", "SuccessiveHalving", "Hyperband", "Ranking", "NoPruner"])
    lines = [f"# {title}", "",
             f"Generated at build time from the JSON Schema that `nanopet-tune schema {kind}` prints "
             f"(`nanopet.schema`, whose defaults and docs of hyperparameters are `default-hypers.yaml`'s).", "",
             "## Top level", ""] + top_level(schema) + ["## Sections", ""] + schema_tables(schema, sections)
    return "\n".join(lines)


def read_result(path: Path) -> tuple[dict, str]:
    """A results file: ``key: value`` header lines up to the first blank line, then the script's output."""
    header, _, body = path.read_text().partition("\n\n")
    fields = {}
    for line in header.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    for key in ("benchmark", "command", "machine", "commit"):
        if not fields.get(key):
            raise ValueError(f"{path}: header line '{key}: ...' missing (see benchmarks/README.md, 'Adding a result')")
    return fields, body.strip("\n")


def benchmarks_page(root: Path) -> str:
    lines = ["# Benchmark results", "",
             "Each section is one file of `benchmarks/results/`: the command that produced it, the machine, the commit "
             "measured, then the table as the script (or the run described) printed it. A figure describes that commit; "
             "rerun the command to measure yours. The scripts are listed in `benchmarks/README.md`.", ""]
    for path in sorted((root / "benchmarks" / "results").glob("*.txt")):
        fields, body = read_result(path)
        lines += [f"## {fields['benchmark']}", "",
                  f"- command: `{fields['command']}`", f"- machine: {fields['machine']}",
                  f"- commit: `{fields['commit']}`" + (f" ({fields['version']})" if fields.get("version") else ""),
                  f"- file: `benchmarks/results/{path.name}`", ""]
        if fields.get("summary"):
            lines += [fields["summary"], ""]
        lines += ["```text", body, "```", ""]
    return "\n".join(lines)


def generate(out: Path, root: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pages = {"options.md": options_page(), "options-file.md": format_page("options"),
             "search-space.md": format_page("space"), "benchmarks.md": benchmarks_page(root)}
    for name, text in pages.items():
        path = out / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
