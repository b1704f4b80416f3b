"""Golden fixture of pixclass-ops, made by PyTorch: gradients of max-pooling
(with ties), nearest upsampling used twice, softmax and a stride-2
convolution on an odd, mixed-parity shape (``ops.safetensors``).

Run from the repository root with a Python that has torch and safetensors
(see DEVELOPERS.md):

    python crates/pixclass-ops/tests/golden/make_ops_golden.py
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent


def ops_case():
    torch.manual_seed(1)
    t = {}
    # Max-pool with ties: constant blocks and random values.
    x = torch.randn(2, 3, 6, 8)
    x[0, 0, :2, :2] = 0.5
    x[1, 2, 2:4, 4:8] = -1.0
    x = x.double().requires_grad_(True)
    r = torch.randn(2, 3, 3, 4).double()
    (F.max_pool2d(x, 2) * r).sum().backward()
    t["maxpool.x"], t["maxpool.r"], t["maxpool.grad"] = x.detach(), r, x.grad.clone()
    # Odd size: trailing row/column dropped.
    x = torch.randn(1, 2, 7, 5).double().requires_grad_(True)
    r = torch.randn(1, 2, 3, 2).double()
    (F.max_pool2d(x, 2) * r).sum().backward()
    t["maxpool_odd.x"], t["maxpool_odd.r"], t["maxpool_odd.grad"] = x.detach(), r, x.grad.clone()
    # Upsample whose input is also used directly (accumulation).
    x = torch.randn(2, 3, 4, 5).double().requires_grad_(True)
    r = torch.randn(2, 3, 8, 10).double()
    r2 = torch.randn(2, 3, 4, 5).double()
    ((F.interpolate(x, scale_factor=2, mode="nearest") * r).sum() + (x * r2).sum()).backward()
    t["upsample.x"], t["upsample.r"], t["upsample.r2"], t["upsample.grad"] = x.detach(), r, r2, x.grad.clone()
    # Softmax over dim 1.
    x = torch.randn(2, 5, 3, 4).double().requires_grad_(True)
    r = torch.randn(2, 5, 3, 4).double()
    (F.softmax(x, 1) * r).sum().backward()
    t["softmax.x"], t["softmax.r"], t["softmax.grad"] = x.detach(), r, x.grad.clone()
    # Stride-2 convolution on a mixed-parity input (7 x 10), k 3, pad 1.
    x = torch.randn(2, 3, 7, 10).double().requires_grad_(True)
    wt = torch.randn(4, 3, 3, 3).double().requires_grad_(True)
    y = F.conv2d(x, wt, stride=2, padding=1)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    t["conv_s2.x"], t["conv_s2.w"], t["conv_s2.r"] = x.detach(), wt.detach(), r
    t["conv_s2.grad_x"], t["conv_s2.grad_w"], t["conv_s2.y"] = x.grad.clone(), wt.grad.clone(), y.detach()
    save_file({a: b.contiguous() for a, b in t.items()}, str(OUT / "ops.safetensors"))
    print("ops")


if __name__ == "__main__":
    torch.set_num_threads(1)
    ops_case()
