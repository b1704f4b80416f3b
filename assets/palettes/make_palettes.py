"""Regenerates the palette text files in this folder from the original pickled
NumPy files of the study (``../shared/data/colours/colour_kmeans{K}_cat7.npy``).

Usage (from the repository root): python assets/palettes/make_palettes.py ../shared/data/colours
"""
import sys
from pathlib import Path

import numpy as np

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/colours")
out = Path(__file__).resolve().parent
for k in (16, 24, 32):
    centres, distortion = np.load(src / f"colour_kmeans{k}_cat7.npy", allow_pickle=True, encoding="latin1")
    centres = np.asarray(centres, dtype=np.float64).reshape(k, 3)
    lines = [
        f"# reference colour palette: {k} k-means centres of CIFAR-10 horse pixels (class 7)",
        "# RGB on the 1/256 scale, one colour per line; from colour_kmeans%d_cat7.npy" % k,
        f"# distortion: {float(distortion)!r}",
    ]
    lines += [" ".join(repr(float(v)) for v in c) for c in centres]
    (out / f"kmeans{k}_cat7.txt").write_text("\n".join(lines) + "\n")
    print(k, float(distortion))
