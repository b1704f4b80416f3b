"""Golden values for pixclass's Adam: torch.optim.Adam on a fixed problem.

Run from the repository root: python crates/pixclass-train/tests/golden/make_adam_golden.py
Writes adam.json next to this script.
"""
import json
from pathlib import Path

import torch

p = torch.tensor([0.5, -1.5, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
opt = torch.optim.Adam([p], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
target = torch.tensor([1.0, 2.0, -3.0, 0.25], dtype=torch.float64)
history = []
for step in range(5):
    opt.zero_grad()
    loss = ((p - target) ** 3).abs().sum()
    loss.backward()
    opt.step()
    history.append(p.detach().tolist())
out = {"init": [0.5, -1.5, 2.0, 0.0], "target": target.tolist(), "lr": 0.05, "history": history}
(Path(__file__).resolve().parent / "adam.json").write_text(json.dumps(out, indent=1))
print(history[-1])
