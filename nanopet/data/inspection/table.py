"""The text ``nanopet-tune inspect`` prints: a ``DataReport`` as one table, then neighbours, suspicious frames,
unit hints and notes."""

from __future__ import annotations

from .report import TRAINING_BYTES_PER_EDGE, DataReport

SHOWN_FRAMES = 10  # per rule; the rest are counted
MEMORY_GB = 16.0


def render_report(report: DataReport, memory_gb: float = MEMORY_GB) -> str:
    """The whole report as text (lines joined with newlines, no trailing newline)."""
    return "\n".join(_summary(report) + _neighbours(report, memory_gb) + _suspicious(report) + _remarks(report))


def _summary(report: DataReport) -> list:
    files = report.files[0] if len(report.files) == 1 else f"{len(report.files)} files ({', '.join(report.files)})"
    low, median, high = report.atoms_per_structure
    rows = [
        ("structures", f"{report.structures:,} ({report.atoms:,} atoms)"),
        ("atoms per structure", f"{low} min, {median:g} median, {high} max"),
        ("species", ", ".join(f"{s.symbol} {_count(s.atoms, 'atom')} in {_count(s.structures, 'structure')}"
                              for s in report.species)),
        ("geometry", ", ".join(f"{count:,} {kind}" for kind, count in report.geometry.items())),
        ("energy", _keys(report, "energy") + _energy_unit(report)),
    ]
    if report.energy_per_atom is not None:
        spread = report.energy_per_atom
        text = f"mean {spread.mean:.4g}, std {spread.std:.3g}, min {spread.min:.4g}, max {spread.max:.4g} eV/atom"
        if report.energy_residual is not None:
            text += f"; {report.energy_residual:.3g} eV/atom robust spread around a per-species baseline"
        rows.append(("energy per atom", text))
    forces = _keys(report, "forces")
    if report.force_rms is not None:
        forces += f"; RMS {report.force_rms:.3g} eV/A, largest component {report.force_max:.3g} eV/A"
    rows.append(("forces", forces))
    stress = _keys(report, "stress") if report.keys.stress or not report.keys.virial else _keys(report, "virial")
    if report.stress_max is not None:
        stress += f"; largest component {report.stress_max:.3g} eV/A^3"
    rows.append(("stress / virial" if report.keys.virial else "stress", stress))
    width = max(len(name) for name, _ in rows)
    timing = f"read in {report.timings.get('read', 0):.1f} s, {report.timings.get('total', 0):.1f} s in all"
    return [f"{files} ({timing})"] + [f"  {name:<{width}}  {text}" for name, text in rows]


def _keys(report: DataReport, kind: str) -> str:
    found = getattr(report.keys, kind)
    if not found:
        return "none found"
    used = {"energy": report.energy_key, "forces": report.forces_key, "stress": report.stress_key,
            "virial": report.virial_key}[kind]
    text = f"'{used}' in {_count(report.key_frames.get(used, 0), 'frame')}"
    others = [f"'{key}' in {_count(report.key_frames.get(key, 0), 'frame')}" for key in found if key != used]
    return text + (f" (used); also {', '.join(others)}" if others else "")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _energy_unit(report: DataReport) -> str:
    if not report.energy_unit_given:
        return "; unit eV assumed (the file cannot tell; say another with --energy-unit), lengths in A"
    return f"; unit {report.energy_unit} (given), lengths in A"


def _neighbours(report: DataReport, memory_gb: float) -> list:
    neighbours = report.neighbours
    if neighbours is None:
        return ["", "neighbours: no structure with usable positions"]
    sample = (f"all {neighbours.sampled:,} structures" if neighbours.sampled == report.structures
              else f"a seeded random sample of {neighbours.sampled:,} of {report.structures:,} structures")
    header = ("cutoff (A)", "mean", "max", "training MB/atom (est.)", f"atoms per pass in {memory_gb:g} GB (est.)")
    table = [header] + [(f"{row.cutoff:g}", f"{row.mean:.1f}", str(row.max), f"{row.training_bytes_per_atom() / 1e6:.1f}",
                         f"{int(memory_gb * 1e9 // row.training_bytes_per_atom()):,}" if row.mean > 0 else "-")
                        for row in neighbours.rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(header))]
    lines = ["", f"neighbours per atom (full list, periodic images included), from {sample}:"]
    lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table]
    if neighbours.cutoff_for_20 is not None:
        lines.append(f"  the median atom has 20 neighbours within {neighbours.cutoff_for_20:.2f} A")
    else:
        lines.append(f"  the median atom has fewer than 20 neighbours within {neighbours.rows[-1].cutoff:g} A")
    if neighbours.shell_ends:
        ends = " and ".join(f"{end:g}" for end in neighbours.shell_ends)
        lines.append(f"  neighbour shells (peaks of the pair distribution) end at {ends} A")
    if neighbours.molecule_diameter is not None:
        lines.append(f"  every atom sees its whole molecule within {neighbours.molecule_diameter:.2f} A (the widest molecule)")
    lines.append(f"  memory: estimated for the default model (d_pet 128, 2 GNN x 2 attention layers, float32, energy + "
                 f"forces + stress) from {TRAINING_BYTES_PER_EDGE / 1e3:.0f} kB per edge, measured on CPU; a larger batch is "
                 "split into passes (atoms_per_pass)")
    return lines


def _suspicious(report: DataReport) -> list:
    lines = ["", "suspicious frames (0-based indexes):"]
    for found in report.suspicious:
        count = len(found.frames)
        lines.append(f"  {found.kind}: {_count(count, 'frame')} ({found.rule})")
        for ref in found.frames[:SHOWN_FRAMES]:
            lines.append(f"    {report.frame_name(ref)}: {found.details[ref]}")
        if count > SHOWN_FRAMES:
            lines.append(f"    ... and {count - SHOWN_FRAMES:,} more")
    clean = [kind for kind in report.checked if kind not in {found.kind for found in report.suspicious}]
    if clean:
        lines.append(f"  none found: {', '.join(clean)}")
    return lines


def _remarks(report: DataReport) -> list:
    lines = []
    if report.unit_hints:
        lines += ["", "units:"] + [f"  {hint}" for hint in report.unit_hints]
    if report.notes:
        lines += ["", "notes:"] + [f"  {note}" for note in report.notes]
    return lines
