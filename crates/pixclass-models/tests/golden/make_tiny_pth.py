"""A tiny PyTorch zip checkpoint for the `.pth` reader test: a nested
state dict (under "state_dict") with an f32 conv weight, an f64 bias, a
BatchNorm's int64 num_batches_tracked, and a non-contiguous (transposed) view.

Run from the repository root:
    python crates/pixclass-models/tests/golden/make_tiny_pth.py
"""
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent
w = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 10
sd = {
    "conv.weight": w,
    "conv.bias": torch.tensor([0.5, -1.25], dtype=torch.float64),
    "bn.num_batches_tracked": torch.tensor(7),
    "fc.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
}
torch.save({"state_dict": sd, "epoch": 3}, OUT / "tiny.pth")
