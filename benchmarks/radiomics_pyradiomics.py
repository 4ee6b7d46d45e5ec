"""dp_sklearn.radiomics against PyRadiomics on the masked cxr1k regions: speed and agreement per feature.

Run ``python benchmarks/radiomics_pyradiomics.py`` (needs ``pyradiomics-bhklab``, in the dev extra).
Both compute all 102 2-D features of the same 197 regions (128 px, ``force2D``, ``binWidth = 1/32``,
no resampling); the script prints each one's wall and CPU time (CPU time is the fairer number on
a shared machine) and, with ``--table``, the markdown table of docs/radiomics.md (feature, maximum
relative deviation over the regions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _timed(fn, repeats):
    best = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best = (w, c) if best is None or w < best[0] else best
    return out, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image size (default 128)")
    ap.add_argument("--repeats", type=int, default=1, help="timing repeats, best wall time kept (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as PyRadiomics)")
    ap.add_argument("--table", action="store_true", help="print the per-feature agreement table (markdown)")
    args = ap.parse_args(argv)

    import torch

    from dp_sklearn.datasets import load_cxr1k
    from dp_sklearn.radiomics import FEATURE_NAMES, radiomic_features
    from test_radiomics_pyradiomics import pyradiomics_features, relative_deviation

    torch.set_num_threads(args.threads)
    d = load_cxr1k(args.size)
    keep = d.mask_available & d.masks.reshape(len(d.masks), -1).any(1)
    X, M = d.images[keep].astype(np.float64), d.masks[keep]
    ref, (w_ref, c_ref) = _timed(lambda: pyradiomics_features(X, M), args.repeats)
    got, (w_dp, c_dp) = _timed(lambda: radiomic_features(X, M), args.repeats)
    print(f"{len(X)} regions at {args.size} px, 102 features each; load average {os.getloadavg()[0]:.1f}")
    print(f"PyRadiomics (pyradiomics-bhklab, one image at a time): wall {w_ref:.2f} s, CPU {c_ref:.2f} s")
    print(f"dp_sklearn.radiomics (torch {torch.__version__}, {args.threads} thread(s), one batch): "
          f"wall {w_dp:.2f} s, CPU {c_dp:.2f} s")
    worst = relative_deviation(got, ref).max(0)
    print(f"features within 1e-6 relative on every region: {(worst <= 1e-6).sum()} of {len(FEATURE_NAMES)}; "
          f"largest deviation {worst.max():.1e} ({FEATURE_NAMES[int(worst.argmax())]})")
    if args.table:
        print("\n| feature | max relative deviation |\n|---|---|")
        for n, w in zip(FEATURE_NAMES, worst):
            print(f"| {n} | {'0 (identical)' if w == 0 else f'{w:.1e}'} |")


if __name__ == "__main__":
    main()
