"""``python -m nanopet.cli``: the ``nanopet-tune`` command (e.g. under ``torchrun -m nanopet.cli train``)."""

import sys

from nanopet.cli import main

sys.exit(main())
