"""What a dataset holds, before training on it: ``inspect_data(paths) -> DataReport`` and its text table.

- ``survey``: ``inspect_data``, one streaming pass and the statistics after it;
- ``collect``: the pass (a few numbers per frame, a seeded sample of frames);
- ``neighbours``: neighbours per atom at candidate cutoffs;
- ``suspicious``: overlapping atoms, force outliers, duplicated frames, energy outliers;
- ``report``: the ``DataReport`` data classes (what ``init`` reads);
- ``table``: ``render_report``, the text ``nanopet-tune inspect`` prints.
"""

from .report import DataReport, FrameRef, Neighbours, NeighbourRow, Species, Spread, Suspicious
from .survey import inspect_data
from .table import render_report

__all__ = ["inspect_data", "render_report", "DataReport", "FrameRef", "Neighbours", "NeighbourRow", "Species",
           "Spread", "Suspicious"]
