"""Peak RSS of ``attention_maps(paths, out=...)`` and of ``dp-sklearn predict --attention-dir`` against the
number of paths (issue 17: memory must stay flat). Each measurement runs in a fresh process.

    python benchmarks/streaming_rss.py --sizes 2000 10000 20000 --workdir /tmp/rss

Paths repeat the cxr1k PNGs (symbolic links, so every path and overlay is distinct). The model is a
one-epoch ``MaskAttentionClassifier("vgg_compact", image_size=32)`` fitted on 100 cxr1k images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from dp_sklearn.datasets import CXR1K_DIR  # noqa: E402

CXR1K = CXR1K_DIR / "images"  # the bundled copy


def peak_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def folder_of(n, workdir):
    """``workdir/data_<n>/<label>/<i>.png``: n links to the cxr1k PNGs, in turn."""
    root = workdir / f"data_{n}"
    if not root.exists():
        files = sorted(CXR1K.glob("*/*.png"))
        for i in range(n):
            src = files[i % len(files)]
            (root / src.parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(src, root / src.parent.name / f"{i:06d}.png")
    return sorted(str(p) for p in root.glob("*/*.png"))


def child(args):
    workdir = Path(args.workdir)
    paths = folder_of(args.n, workdir)
    start = time.perf_counter()
    if args.child == "cli":
        out = workdir / f"overlays_{args.n}"
        subprocess.run([sys.executable, "-m", "dp_sklearn.cli", "predict", "--model", str(workdir / "model.dps"),
                        "--data", str(workdir / f"data_{args.n}"), "--out", str(workdir / f"pred_{args.n}.csv"),
                        "--attention-dir", str(out)], check=True, stdout=subprocess.DEVNULL)
        result = {"peak_rss_mb": peak_mb(resource.RUSAGE_CHILDREN), "overlays": len(os.listdir(out))}
        shutil.rmtree(out)  # 20k overlays take gigabytes
    else:
        from dp_sklearn.persistence import load_model

        est = load_model(workdir / "model.dps")
        before = peak_mb()
        out = workdir / f"maps_{args.n}.npy" if args.child == "npy" else None
        maps = est.attention_maps(paths, out=out)
        result = {"peak_rss_mb": peak_mb(), "peak_before_call_mb": before, "shape": list(maps.shape)}
    print(json.dumps({"what": args.child, "n": args.n, "wall_s": round(time.perf_counter() - start, 1), **result}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 20000])
    p.add_argument("--what", nargs="+", choices=["npy", "memory", "cli"], default=["npy", "memory", "cli"])
    p.add_argument("--workdir", default="/tmp/streaming_rss")
    p.add_argument("--child", choices=["npy", "memory", "cli"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "model.dps").exists():
        import numpy as np

        from dp_sklearn.estimators import MaskAttentionClassifier
        from dp_sklearn.persistence import save_model

        files = sorted(CXR1K.glob("*/*.png"))[::10][:100]
        est = MaskAttentionClassifier("vgg_compact", image_size=32, max_epochs=1, verbose=0, random_state=0)
        save_model(est.fit([str(f) for f in files], np.array([f.parent.name for f in files])), workdir / "model.dps")
    for n in args.sizes:
        for what in args.what:
            cmd = [sys.executable, __file__, "--child", what, "--n", str(n), "--workdir", str(workdir)]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
