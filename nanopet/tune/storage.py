"""Where studies live: one room for storages, the studies in them, a search's stage studies, and a trial
chosen from them with its options rebuilt. Used by both drivers, ``retrain``, ``compare-losses``,
``report`` and ``dashboard``.

- A storage: a journal file ``studies/<name>/journal.log`` by default (safe for many local processes),
  ``sqlite:///...`` (with a long lock timeout), or ``postgresql://...`` for several machines; a study
  that uses another than its journal file records it in ``studies/<name>/storage.url`` (password masked).
- A search is one study named ``<name>`` (joint), or one per stage named ``<name>.stage<k>-<parameters>``
  (``stage_study_name``; ``search_name`` reads the search back from a stage study).
- ``open_study`` finds a search's stage studies; ``choose_trial`` its best (or a named) trial with the full
  options it trained with (``trial_options``, in the order the ``retrain`` docstring gives).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nanopet.data.splits import absolute_datasets
from nanopet.errors import InputError
from nanopet.options import resolve_options

JOURNAL_FILE = "journal.log"
STORAGE_FILE = "storage.url"  # the storage a study used, for `dashboard` and `studies` (password masked)
JOURNAL_LOCK_GRACE = 10  # s after which a journal lock left by a killed process is broken
STAGE = re.compile(r"\.stage\d+-.*$")  # what a stage study's name adds to its search's name


# ---------------------------------------------------------------------------------------------
# Storages


def storage_url(space) -> str:
    return space.study.storage or str(space.study.path / JOURNAL_FILE)


def is_rdb(url: str) -> bool:
    return bool(re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", url))


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; use psycopg2 when only it is installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL or a journal-file path; connection problems are one-line errors."""
    if is_rdb(url):
        url = postgres_driver(url.replace("postgres://", "postgresql://", 1))
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as error:  # noqa: BLE001 - sqlalchemy/driver errors of many kinds
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"storage {masked(url)}: cannot open ({type(error).__name__}: {first})") from None
    if "://" in url:
        raise InputError(f"storage {masked(url)}: unsupported; use a journal file path, sqlite:///file.db or postgresql://...")
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

    path = Path(url)
    if not path.exists():
        if not create:
            raise InputError(f"{path}: no such study storage")
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(path), grace_period=JOURNAL_LOCK_GRACE)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def record_storage(space) -> None:
    """Remember which storage this study uses (``studies/<name>/storage.url``), password masked."""
    space.study.path.mkdir(parents=True, exist_ok=True)
    if space.study.storage:
        (space.study.path / STORAGE_FILE).write_text(masked(space.study.storage) + "\n")


def find_storage(study: str, directory: str | Path = "studies", storage: str | None = None) -> str:
    """The storage URL of a study given by name (``studies/<name>/``), by a path, or explicitly."""
    if storage:
        return storage
    if "://" in study:
        return study
    path = Path(study)
    if path.is_file():
        return f"sqlite:///{path}" if path.suffix in (".db", ".sqlite", ".sqlite3") else str(path)
    folder = path if path.is_dir() else Path(directory) / study
    if (folder / STORAGE_FILE).is_file():
        url = (folder / STORAGE_FILE).read_text().strip()
        if "***" in url:
            raise InputError(f"study {study}: its storage {url} needs a password; pass --storage with the full URL")
        return url
    if (folder / JOURNAL_FILE).is_file():
        return str(folder / JOURNAL_FILE)
    known = sorted(p.name for p in Path(directory).glob("*/") if (p / JOURNAL_FILE).is_file() or (p / STORAGE_FILE).is_file())
    raise InputError(f"study {study!r}: not found under {directory}/ (known: {', '.join(known) or 'none'}); "
                     "give a study name, a journal file, or --storage URL")


# ---------------------------------------------------------------------------------------------
# Stage studies' names


def stage_study_name(search: str, index: int, parameters) -> str:
    """``<search>.stage<k>-<parameters joined by +>``: the study of stage ``index`` of a staged search."""
    return f"{search}.stage{index}-{'+'.join(parameters)}"


def search_name(study_name: str, attrs: dict | None = None) -> str:
    """The search a study belongs to: its ``search`` attribute, else its name less a stage suffix."""
    return (attrs or {}).get("search") or STAGE.sub("", study_name)


def is_stage_study(name: str) -> bool:
    return STAGE.search(name) is not None


def search_studies(summaries, search: str) -> list:
    """The studies (summaries or FrozenStudy) of ``search`` among a storage's, in stage order."""
    chosen = [s for s in summaries if search_name(s.study_name, s.user_attrs) == search]
    return sorted(chosen, key=lambda s: (int(s.user_attrs.get("stage", 1)), s.study_name))


# ---------------------------------------------------------------------------------------------
# Listing studies


def study_rows(url: str) -> list[dict]:
    """One row per study in a storage: trials by state, best value, stage."""
    storage = open_storage(url, create=False)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        trials = storage.get_all_trials(storage.get_study_id_from_name(summary.study_name), deepcopy=False)
        by_state = {state: sum(t.state == state for t in trials) for state in TrialState}
        completed = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = min((t.values for t in completed), default=None)
        attrs = summary.user_attrs
        rows.append({"study": summary.study_name, "storage": masked(url), "metric": attrs.get("metric", "?"),
                     "complete": by_state[TrialState.COMPLETE], "pruned": by_state[TrialState.PRUNED],
                     "fail": by_state[TrialState.FAIL], "running": by_state[TrialState.RUNNING],
                     "waiting": by_state[TrialState.WAITING], "best": best})
    return rows


def list_studies(directory: str | Path = "studies", storage: str | None = None) -> list[dict]:
    """Every study in ``directory/*/`` (journal files and recorded storages), or in ``storage``."""
    urls = [storage] if storage else []
    if not storage:
        for folder in sorted(Path(directory).glob("*/")):
            url = None
            if (folder / STORAGE_FILE).is_file():
                url = (folder / STORAGE_FILE).read_text().strip()
            elif (folder / JOURNAL_FILE).is_file():
                url = str(folder / JOURNAL_FILE)
            if url and url not in urls:
                urls.append(url)
    rows = []
    for url in urls:
        if "***" in url:
            rows.append({"study": f"(studies in {url}: pass --storage with the password)", "storage": url})
            continue
        try:
            rows += study_rows(url)
        except InputError as error:
            rows.append({"study": f"(unreadable: {error})", "storage": masked(url)})
    return rows


# ---------------------------------------------------------------------------------------------
# A search's studies, and a trial chosen from them


@dataclass
class FoundStudy:
    name: str  # the search's name (staged studies are <name>.stage<k>-<parameters>)
    url: str
    studies: list  # optuna.Study per stage, in stage order
    folder: Path  # studies/<name>
    space: object | None = None  # the SearchSpace, when its file is there and still matches


@dataclass
class ChosenTrial:
    label: str  # "<study>#<number>"
    trial: object  # optuna FrozenTrial
    study: object  # its optuna.Study
    options: dict  # resolved, as the search trained them
    how: str  # where the options came from


def open_study(study: str, directory: str | Path = "studies", storage: str | None = None) -> FoundStudy:
    """The studies of a search by name (``studies/<name>/``), journal file, URL or ``--storage``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = find_storage(study, directory, storage)
    backend = open_storage(url, create=False)
    summaries = backend.get_all_studies()
    groups = {name: search_studies(summaries, name) for name in {search_name(s.study_name, s.user_attrs) for s in summaries}}
    path = Path(study)
    # a search name, a stage study's name, a study folder, or a journal file inside one
    candidates = [study, search_name(study), path.name, path.parent.name]
    wanted = next((name for name in candidates if name in groups), None)
    if wanted is None and len(groups) == 1 and ("://" in study or path.exists() or storage):
        wanted = next(iter(groups))
    if wanted is None:
        raise InputError(f"study {study!r}: not in storage {masked(url)} (it holds: {', '.join(sorted(groups)) or 'no study'})")
    studies = [optuna.load_study(study_name=s.study_name, storage=backend) for s in groups[wanted]]
    if path.is_file():
        folder = path.parent
    elif path.is_dir():
        folder = path
    else:
        folder = Path(directory) / wanted
    found = FoundStudy(wanted, url, studies, folder)
    found.space = _matching_space(found, studies[0].user_attrs)
    return found


def recorded_path(found: FoundStudy, text: str | None) -> Path | None:
    """A path the search recorded (relative to where it ran): as is, else against the folder holding
    ``studies/`` (where a search with the default study directory ran)."""
    if not text:
        return None
    path = Path(text)
    if path.exists() or path.is_absolute():
        return path
    moved = found.folder.parent.parent / path
    return moved if moved.exists() else path


def _matching_space(found: FoundStudy, attrs: dict):
    """The study's search-space file, parsed, if it is still there and still describes the study."""
    from nanopet.tune.space import load_search_space

    source = recorded_path(found, attrs.get("source"))
    if source is None or not source.is_file():
        return None
    try:
        space = load_search_space(source, check_data=False)
    except InputError:
        return None
    return space if space.fingerprint() == attrs.get("fingerprint") else None


def is_staged(found: FoundStudy) -> bool:
    return found.studies[0].user_attrs.get("stages", len(found.studies)) > 1


def trial_labels(found: FoundStudy) -> list[tuple[str, object, object]]:
    """(label a user types, study, trial) for every trial: ``3``, or ``stage2-3`` in a staged search."""
    out = []
    for study in found.studies:
        prefix = f"stage{study.user_attrs.get('stage', 1)}-" if is_staged(found) else ""
        for trial in study.get_trials(deepcopy=False):
            out.append((f"{prefix}{trial.number}", study, trial))
    return out


def _listing(labels: list[str]) -> str:
    """Labels with runs of consecutive numbers shortened: 0-4, 7; stage2-0..2 in a staged study."""
    groups: dict[str, list[int]] = {}
    for label in labels:
        prefix, _, number = label.rpartition("-") if label.startswith("stage") else ("", "", label)
        groups.setdefault(prefix + ("-" if prefix else ""), []).append(int(number))
    parts = []
    for prefix, numbers in groups.items():
        numbers.sort()
        start = previous = numbers[0]
        for n in numbers[1:] + [None]:
            if n is not None and n == previous + 1:
                previous = n
                continue
            parts.append(f"{prefix}{start}" + (f"{'..' if prefix else '-'}{previous}" if previous != start else ""))
            if n is not None:
                start = previous = n
    return ", ".join(parts) or "none"


def choose_trial(found: FoundStudy, spec: str | int | None = None) -> ChosenTrial:
    """The best completed trial, or the one ``spec`` names; unknown or unfinished trials are one-line errors."""
    labelled = trial_labels(found)
    complete = [(label, s, t) for label, s, t in labelled if t.state == TrialState.COMPLETE and t.values]
    valid = _listing([label for label, _, _ in complete])
    if spec is None:
        if not complete:
            raise InputError(f"study {found.name}: no completed trial yet; run (or resume) its search first")
        # the search's choice once its last stage chose (a stage keeps its starting values when its best is within
        # the noise, nanopet.tune.studies.chosen_values), else the lowest first value; on a tie the trial that trained
        # (not a stage's carried-in copy of it)
        last, stages = found.studies[-1], found.studies[0].user_attrs.get("stages", 1)
        number = (last.user_attrs.get("chosen") or {}).get("trial") if len(found.studies) == stages else None
        choice = [c for c in complete if c[1] is last and c[2].number == number]
        label, study, trial = choice[0] if choice else \
            min(complete, key=lambda c: (c[2].values[0], c[2].user_attrs.get("role") == "carried"))
        if trial.user_attrs.get("role") == "carried":  # the trial that trained it, in the stage before
            trained = [c for c in complete if c[2].user_attrs.get("trial") == trial.user_attrs.get("trial")
                       and c[2].user_attrs.get("role") != "carried"]
            label, study, trial = trained[0] if trained else (label, study, trial)
    else:
        text = str(spec).strip()
        if "#" in text:
            name, _, number = text.rpartition("#")
            matches = [(label, s, t) for label, s, t in labelled if s.study_name == name and str(t.number) == number]
        else:
            matches = [(label, s, t) for label, s, t in labelled if label == text]
            if not matches and text.isdigit() and is_staged(found):
                raise InputError(f"--trial {text}: study {found.name} is staged; name the stage, e.g. --trial stage1-{text} "
                                 f"(completed trials: {valid})")
        if not matches:
            raise InputError(f"--trial {text}: study {found.name} has no such trial; completed trials: {valid}")
        label, study, trial = matches[0]
        if trial.state != TrialState.COMPLETE or not trial.values:
            reason = trial.user_attrs.get("reason")
            state = {"FAIL": "failed", "PRUNED": "pruned", "RUNNING": "still running", "WAITING": "waiting to start"}
            raise InputError(f"--trial {text}: trial {study.study_name}#{trial.number} is {state.get(trial.state.name, trial.state.name.lower())}"
                             + (f" ({reason})" if reason else "") + f", not complete; completed trials: {valid}")
    options, how = trial_options(found, study, trial)
    return ChosenTrial(f"{study.study_name}#{trial.number}", trial, study, options, how)


def trial_options(found: FoundStudy, study, trial) -> tuple[dict, str]:
    """A trial's full options, resolved, dataset paths absolute (see the module docstring for the order)."""
    from nanopet.checkpoints import load_checkpoint
    from nanopet.tune.params import decode

    attrs = trial.user_attrs
    source = recorded_path(found, study.user_attrs.get("source"))
    base_dir = source.parent if source else Path(".")
    if isinstance(attrs.get("options"), dict):
        return absolute_datasets(resolve_options(attrs["options"]), base_dir), "the trial's stored options"
    config = attrs.get("config")
    if config is None:
        config = {**(study.user_attrs.get("fixed") or {}), **{k: decode(v) for k, v in trial.params.items()}}
    if found.space is not None:
        space = found.space
        return absolute_datasets(space.options_for(config), space.base_dir), f"search space {space.source}"
    artifacts = recorded_path(found, attrs.get("artifacts"))
    if artifacts is not None and (artifacts / "trial.json").is_file():
        record = json.loads((artifacts / "trial.json").read_text())
        if isinstance(record.get("options"), dict):
            return absolute_datasets(resolve_options(record["options"]), base_dir), str(artifacts / "trial.json")
    if artifacts is not None and (artifacts / "model.ckpt").is_file():
        return absolute_datasets(resolve_options(load_checkpoint(artifacts / "model.ckpt")["options"]), base_dir), \
            str(artifacts / "model.ckpt")
    raise InputError(f"trial {study.study_name}#{trial.number}: cannot rebuild its options: the study's search-space file "
                     f"({source or 'not recorded'}) is gone or changed, and {artifacts or 'its artifact folder'} has no "
                     "trial.json or model.ckpt; restore the search-space file")


def defaults_options(found: FoundStudy) -> tuple[dict, str] | None:
    """The options of the search's starting point: its defaults trial (first stage), else the base options."""
    first = found.studies[0]
    for trial in first.get_trials(deepcopy=False):
        if trial.user_attrs.get("role") == "defaults" and ("config" in trial.user_attrs or trial.params):
            try:
                options, how = trial_options(found, first, trial)
                return options, f"trial {first.study_name}#{trial.number} (the search's defaults), {how}"
            except InputError:
                break
    if found.space is not None:
        return absolute_datasets(found.space.resolved, found.space.base_dir), f"base options of {found.space.source}"
    return None
