"""A fast, streaming extended-XYZ frame reader, with ``ase.io.iread`` behind it for everything else.

``iter_frames(path)`` yields one ``Frame`` per structure: atomic numbers, positions, cell, pbc, the
comment line's ``key=value`` pairs (``info``) and the per-atom columns (``arrays``), exactly as the file
stores them: no unit conversion, and labels stay where the file put them (``energy``/``stress`` in
``info``, ``forces`` in ``arrays``), so the caller decides which key means what.

The comment line follows ``ase.io.extxyz``: values may be quoted with ``"..."``, ``'...'``, ``{...}`` or
``[...]`` (backslash escapes), numbers become ints or floats (several: a 1-D array), ``T``/``F`` become
booleans, a key without a value is ``True``, ``Lattice`` gives the cell (pbc ``T T T`` unless ``pbc`` says
otherwise), ``stress``/``virial`` with 9 values become 3x3 (Fortran order, as ase). Unlike ase, a
``stress``/``virial`` of 6 values is kept as the 6-vector instead of refused. ``Properties`` names the
per-atom columns (types ``S``, ``R``, ``I``, ``L`` with counts; ``species``/``Z`` give the numbers, ``pos``
the positions).

Files that are not ``.xyz``/``.extxyz``, and any frame this reader cannot parse (``VEC`` cell lines, a
JSON value, a bad column), are read by ``ase.io.iread`` from that frame on, with ase's calculator results
put back into ``info`` and ``arrays``; if ase cannot read it either, the error is one ``InputError`` line
naming the file, the frame and its line.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError

EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
SPECIAL_3X3_KEYS = ("Lattice", "stress", "virial")
COLUMN_NAMES = {"pos": "positions", "Z": "numbers", "species": "symbols", "charge": "charges"}
BOOLEANS = {"T": True, "F": False, "true": True, "false": False, "True": True, "False": False,
            "TRUE": True, "FALSE": False}

_QUOTED = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\{[^}]*\}|\[[^\]]*\]'
_WORD = rf'(?:{_QUOTED}|\\.|[^\s="\'{{\[\\])+'
_PAIR = re.compile(rf'\s*({_WORD})(?:\s*=\s*({_WORD}))?\s*')
_SIMPLE_PAIR = re.compile(r'\s*([A-Za-z_][\w-]*)(?:\s*=\s*("[^"\\]*"|[^\s"\'{}\[\]=\\]+))?(?=\s|$)\s*')  # no escapes
_DELIMITERS = {'"': '"', "'": "'", "{": "}", "[": "]"}


def _symbol_numbers() -> dict:
    from ase.data import chemical_symbols

    return {symbol: number for number, symbol in enumerate(chemical_symbols)}


_NUMBERS = _symbol_numbers()


@dataclass
class Frame:
    """One structure as its file stores it (no unit conversion).

    ``index`` is the 0-based frame number in the file, ``line`` the 1-based line of its atom count (0 when
    the format has no lines); ``cell`` rows are lattice vectors, zeros without a cell.
    """

    index: int
    line: int
    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64
    cell: np.ndarray  # (3, 3) float64
    pbc: np.ndarray  # (3,) bool
    info: dict = field(default_factory=dict)  # per-frame values (energy, stress, virial, strings, ...)
    arrays: dict = field(default_factory=dict)  # per-atom values other than numbers and positions

    def __len__(self) -> int:
        return len(self.numbers)


class _Unparsed(Exception):
    """This reader cannot parse the frame; ase gets a try."""


def iter_frames(path) -> Iterator[Frame]:
    """Every frame of ``path``, streamed. A missing file, an empty one, or a frame neither this reader nor
    ase can read is an ``InputError`` naming the file (and the frame and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (no frames)")
    start = 0
    if path.suffix.lower() in EXTXYZ_SUFFIXES:
        reader = _ExtxyzReader(path)
        for frame in reader:
            yield frame
        if reader.unparsed_at is None:
            return
        start = reader.unparsed_at
    yield from _ase_frames(path, start)


def read_frames(path) -> list[Frame]:
    """All frames of ``path`` (see ``iter_frames``)."""
    return list(iter_frames(path))


def frame_from_atoms(atoms, index: int = 0, line: int = 0) -> Frame:
    """The ``Frame`` of an ``ase.Atoms``: its calculator's results go back into ``info`` (per-structure
    values) and ``arrays`` (per-atom values), where the file had them."""
    info, arrays = dict(atoms.info), {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}
    for key, value in (getattr(atoms.calc, "results", None) or {}).items():
        (arrays if _per_atom_result(key, value, len(atoms)) else info)[key] = value
    return Frame(index, line, np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
                 np.asarray(atoms.cell.array, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool), info, arrays)


def _per_atom_result(key: str, value, n_atoms: int) -> bool:
    """Whether a calculator result is per atom: by ase's declaration of the property, else by its length."""
    from ase.outputs import ArrayProperty, all_outputs

    declared = all_outputs.get(key)
    if declared is not None:
        return isinstance(declared, ArrayProperty) and declared.shapespec[:1] == ("natoms",)
    return isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n_atoms


# ----------------------------------------------------------------------------------------------
# The fast path


class _ExtxyzReader:
    """Iterates the frames of an extended XYZ file; stops at the first frame it cannot parse and leaves its
    index in ``unparsed_at`` (None when the whole file was read)."""

    def __init__(self, path: Path):
        self.path = path
        self.unparsed_at: int | None = None

    def __iter__(self) -> Iterator[Frame]:
        with open(self.path) as handle:
            header, line_number, index = handle.readline(), 1, 0
            while header.strip():  # the end of the file, or a blank line: ase stops there too
                try:
                    count = int(header)
                    comment = handle.readline()
                    lines = list(itertools.islice(handle, count))
                    if len(lines) != count:
                        raise _Unparsed
                    frame = _parse_frame(index, line_number, comment, lines)
                    header = next(handle, "")
                    if header.lstrip().startswith("VEC"):  # an adf-style cell: ase reads it
                        raise _Unparsed
                except (_Unparsed, ValueError, KeyError, IndexError):
                    self.unparsed_at = index
                    return
                yield frame
                line_number += count + 2
                index += 1


def _parse_frame(index: int, line: int, comment: str, lines: list) -> Frame:
    info = parse_comment(comment)
    cell = info.pop("Lattice", None)
    pbc = info.pop("pbc", None)
    if pbc is None:
        pbc = [cell is not None] * 3
    pbc = np.array([pbc] * 3 if isinstance(pbc, bool) else pbc, dtype=bool)
    if pbc.shape != (3,):
        raise _Unparsed
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).T  # extxyz columns -> rows
    if cell.shape != (3, 3):
        raise _Unparsed
    columns = _parse_properties(str(info.pop("Properties", "species:S:1:pos:R:3")))
    arrays = _parse_atoms(lines, columns)
    positions = arrays.pop("positions", None)
    symbols = arrays.pop("symbols", None)
    numbers = arrays.pop("numbers", None)
    if positions is None or (symbols is None and numbers is None):
        raise _Unparsed
    if numbers is None:
        numbers = _atomic_numbers(symbols)
    return Frame(index, line, np.asarray(numbers, dtype=np.int64), positions, cell, pbc, info, arrays)


def parse_comment(comment: str) -> dict:
    """The ``key=value`` pairs of an extended XYZ comment line, valued as ``ase.io.extxyz`` values them."""
    info, position, comment = {}, 0, comment.strip()
    while position < len(comment):
        match = _SIMPLE_PAIR.match(comment, position) or _PAIR.match(comment, position)
        if match is None or match.end() == position:
            raise _Unparsed
        key = _unquote(match.group(1))
        value = _value(key, _unquote(match.group(2)) if match.group(2) is not None else "T")
        info[key] = value
        position = match.end()
    return info


def _unquote(word: str) -> str:
    if "\\" not in word:
        closing = _DELIMITERS.get(word[0])
        if closing is None and not any(c in word for c in "\"'{["):
            return word
        if closing is not None and word.find(closing, 1) == len(word) - 1:
            return word[1:-1]  # one quoted value, the common case
    out, closing, escaped = [], None, False
    for char in word:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif closing is not None:
            if char == closing:
                closing = None
            else:
                out.append(char)
        elif char in _DELIMITERS:
            closing = _DELIMITERS[char]
        else:
            out.append(char)
    return "".join(out)


def _value(key: str, text: str):
    parts = text.replace(",", " ").split()
    value = _numbers(parts) if parts else None
    if value is None:
        if text.startswith("_JSON "):
            raise _Unparsed  # ase decodes JSON values
        booleans = [BOOLEANS.get(part) for part in parts]
        if parts and None not in booleans:
            return booleans[0] if len(booleans) == 1 else booleans
        return text
    if key in SPECIAL_3X3_KEYS and np.size(value) == 9:
        return np.asarray(value).reshape(3, 3, order="F")
    if key == "Lattice":
        raise _Unparsed
    return value


def _numbers(parts: list):
    """An int, a float, or a 1-D array of them (ints when every part is one); None when not numeric."""
    try:
        values = [int(part) for part in parts]
    except ValueError:
        try:
            values = [float(part) for part in parts]
        except ValueError:
            return None
    return values[0] if len(values) == 1 else np.array(values)


def _parse_properties(text: str) -> list:
    """``[(name, type, count, first column)]`` of a ``Properties`` string such as ``species:S:1:pos:R:3``."""
    fields = text.split(":")
    if len(fields) % 3:
        raise _Unparsed
    columns, first = [], 0
    for name, kind, count in zip(fields[0::3], fields[1::3], fields[2::3]):
        count = int(count)
        if kind not in "SRIL" or len(kind) != 1 or count < 1:
            raise _Unparsed
        columns.append((COLUMN_NAMES.get(name, name), kind, count, first))
        first += count
    return columns


def _parse_atoms(lines: list, columns: list) -> dict:
    """The per-atom arrays of the frame's atom lines, by column name."""
    width = sum(count for _, _, count, _ in columns)
    rows = list(map(str.split, lines))
    if set(map(len, rows)) != {width}:
        raise _Unparsed
    tokens = list(itertools.chain.from_iterable(rows))
    arrays = {}
    for name, kind, count, first in columns:
        parts = [tokens[first + k :: width] for k in range(count)]
        if kind == "R":
            values = np.array(parts, dtype=np.float64)
        elif kind == "I":
            values = np.array(parts, dtype=np.int64)
        elif kind == "L":
            values = np.array([[BOOLEANS[p] for p in column] for column in parts], dtype=bool)
        else:
            values = np.array(parts, dtype=object)
        arrays[name] = values[0] if count == 1 else values.T.copy()
    return arrays


def _atomic_numbers(symbols) -> np.ndarray:
    try:
        return np.array([_NUMBERS[s] for s in symbols], dtype=np.int64)
    except KeyError:
        from ase.data import atomic_numbers

        return np.array([atomic_numbers[str(s).capitalize()] for s in symbols], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Everything else: ase


def _ase_frames(path: Path, start: int) -> Iterator[Frame]:
    import ase.io

    index = start
    try:
        for atoms in ase.io.iread(path, index=slice(start, None)):
            yield frame_from_atoms(atoms, index)
            index += 1
    except InputError:
        raise
    except Exception as error:  # ase raises many types; all mean "cannot read"
        message = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{path}: frame {index}{_line_of(path, index)}: cannot read it "
                         f"({type(error).__name__}: {message})") from None
    if index == 0:
        raise InputError(f"{path}: empty file (no frames)")


def _line_of(path: Path, index: int) -> str:
    """`` (line N)`` of frame ``index`` in an xyz file whose frames up to it have valid atom counts, else ''."""
    if path.suffix.lower() not in EXTXYZ_SUFFIXES:
        return ""
    try:
        with open(path) as handle:
            line = 1
            for _ in range(index):
                count = int(handle.readline())
                for _ in range(count + 1):
                    handle.readline()
                line += count + 2
            return f" (line {line})"
    except (ValueError, OSError):
        return ""
