"""Where frames come from: a structure file read one frame at a time, whole or in ranges of frames.

``read_frames(source)`` is the one frame source of the package (datasets, their preparation on disk, ``eval``):
``source`` is a path (every frame, in order) or a ``FrameRange`` from ``frame_ranges`` (frames ``start..stop``,
so that processes can read parts of one file side by side). Nothing holds a whole file's list of frames.

Extended XYZ (what ASE's ``filetype`` calls ``extxyz``) is scanned once for where each frame begins: the atom
count line, the comment line, that many atom lines, and ASE's optional ``VEC`` lines, as ASE's own reader
scans it. A range is then the bytes of its frames, parsed by ASE's extended XYZ reader. Other formats ASE
reads are one range, read in order by ``ase.io.iread``.

File problems are one-line ``InputError``s naming the file and, where known, the frame (``file.xyz:12``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nanopet.errors import InputError


@dataclass(frozen=True)
class FrameRange:
    """Frames ``start`` to ``stop`` (exclusive) of ``path``; ``span``: the bytes they occupy (extended XYZ), else
    None (the whole file, read in order; ``stop`` unknown until it is read)."""

    path: Path
    start: int = 0
    stop: int | None = None
    span: tuple[int, int] | None = None


def frame_ranges(path: str | Path, size: int) -> list[FrameRange]:
    """The frames of ``path`` in consecutive ranges of ``size`` (the last may be shorter); one range for a format
    that cannot be read from the middle. A file without frames is an error."""
    path = Path(path)
    _check_file(path)
    if not _seekable(path):
        return [FrameRange(path)]
    starts = frame_starts(path)
    count = len(starts) - 1
    return [FrameRange(path, a, min(a + size, count), (starts[a], starts[min(a + size, count)])) for a in range(0, count, size)]


def frame_count(path: str | Path) -> int:
    """How many frames ``path`` holds (a scan for extended XYZ; other formats are read through)."""
    path = Path(path)
    _check_file(path)
    if _seekable(path):
        return len(frame_starts(path)) - 1
    return sum(1 for _ in read_frames(path))


def read_frames(source: str | Path | FrameRange) -> Iterator:
    """The frames of ``source`` (a path: all of them) as ``ase.Atoms``, one at a time."""
    if not isinstance(source, FrameRange):
        path = Path(source)
        _check_file(path)
        ranges = frame_ranges(path, RANGE_FRAMES) if _seekable(path) else [FrameRange(path)]
        for frames in ranges:
            yield from read_frames(frames)
        return
    if source.span is None:
        yield from _read_in_order(source.path)
        return
    yield from _read_span(source)


RANGE_FRAMES = 1000  # frames parsed from one block of text when a whole file is read


# ---------------------------------------------------------------------------------------------
# Extended XYZ: where frames begin, and a range of them parsed by ASE


def frame_starts(path: Path) -> list[int]:
    """Byte offset of every frame of an extended XYZ file, and the end of the last frame (as ASE's scan: a blank
    line or the end of the file ends the frames)."""
    starts, position = [], 0
    with open(path, "rb") as handle:
        line = handle.readline()
        while line.strip():
            frame = len(starts)
            try:
                atoms = int(line)
            except ValueError:
                raise InputError(f"{path}:{frame}: cannot read the file (expected the number of atoms of frame {frame}, "
                                 f"got {_shown(line)})") from None
            starts.append(position)
            position += len(line)
            for _ in range(atoms + 1):  # comment line, atom lines
                line = handle.readline()
                if not line:
                    raise InputError(f"{path}:{frame}: cannot read the file (it ends inside frame {frame}, "
                                     f"which announces {atoms} atoms)")
                position += len(line)
            line = handle.readline()
            while line.lstrip().startswith(b"VEC"):
                position += len(line)
                line = handle.readline()
    if not starts:
        raise InputError(f"{path}: empty file (no frames)")
    return starts + [position]


def _read_span(frames: FrameRange) -> Iterator:
    from ase.io.extxyz import read_xyz

    with open(frames.path, "rb") as handle:
        handle.seek(frames.span[0])
        text = handle.read(frames.span[1] - frames.span[0]).decode()
    index = frames.start
    try:
        for atoms in read_xyz(io.StringIO(text), index=slice(None)):
            yield atoms
            index += 1
    except InputError:
        raise
    except Exception as error:  # ase raises many types; all mean "cannot read"
        raise InputError(f"{frames.path}:{index}: cannot read the file ({_described(error)})") from None


def _read_in_order(path: Path) -> Iterator:
    import ase.io

    index = 0
    try:
        for atoms in ase.io.iread(path, index=":"):
            yield atoms
            index += 1
    except InputError:
        raise
    except Exception as error:  # ase raises many types; all mean "cannot read"
        where = f"{path}:{index}" if index else str(path)
        raise InputError(f"{where}: cannot read the file ({_described(error)})") from None
    if index == 0:
        raise InputError(f"{path}: empty file (no frames)")


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (no frames)")


def _seekable(path: Path) -> bool:
    """Whether ``path`` is extended XYZ (ranges of it can be read side by side)."""
    from ase.io.formats import filetype

    try:
        return filetype(str(path)) == "extxyz"
    except Exception:  # noqa: BLE001 - an unknown format is read by ASE in order, which reports it
        return False


def _described(error: Exception) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {message}"


def _shown(line: bytes) -> str:
    text = line.decode(errors="replace").strip()
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
