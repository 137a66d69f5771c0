"""Write a molecular set other than the built-in one, for benchmarks on data the shipped spaces were not tuned on.

    python benchmarks/make_molecules.py OUT.xyz [--n 1000] [--seed 0] [--molecules CH3COOH CH3COCH3 C4H4O]
        [--temperatures 500 800]

The built-in generator (``nanopet/data/xtb.py``: Langevin MD driven and labelled by GFN2-xTB, snapshots 8 fs apart,
energies and forces, no cell) with other molecules of ASE's g2 set and other temperatures. The default: acetic acid,
acetone and furan at 500 and 800 K (the built-in set: ethanol, malonaldehyde and aspirin at 300, 600 and 1000 K).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--molecules", nargs="+", default=["CH3COOH", "CH3COCH3", "C4H4O"])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[500.0, 800.0])
    args = parser.parse_args(argv)

    import ase.io

    from nanopet.data.xtb import generate_xtb_molecules

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0:
            print(f"{done}/{total} structures", file=sys.stderr, flush=True)

    frames = generate_xtb_molecules(args.n, args.seed, progress, tuple(args.molecules), tuple(args.temperatures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.out, frames, format="extxyz")
    print(f"wrote {args.out}: {len(frames)} structures of {', '.join(args.molecules)} at "
          f"{', '.join(f'{t:g}' for t in args.temperatures)} K")


if __name__ == "__main__":
    main()
