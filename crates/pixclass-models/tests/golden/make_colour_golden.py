"""Golden fixtures for pixclass's colourization nets and ops, made by PyTorch.

Run from the repository root with a Python that has torch and safetensors
(see DEVELOPERS.md):

    python crates/pixclass-models/tests/golden/make_colour_golden.py

For each case it builds the PyTorch equivalent of a pixclass net (same
parameter names), perturbs BatchNorm so it is not the identity, and saves the
state dict, an input batch, random targets, the train-mode logits, the
cross-entropy loss, the gradient of every parameter, the running statistics
after the train step, and eval-mode logits. ``ops.safetensors`` holds
gradients of max-pooling (with ties), nearest upsampling used twice, softmax
and stride-2 convolutions on odd, mixed-parity shapes.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent
torch.set_num_threads(1)


def strided_padding(k):
    return (k - 1) // 2


def output_padding(k):
    return 2 + 2 * strided_padding(k) - k


class PoolUpsampleNet(nn.Module):
    def __init__(self, k, nf, nc, nic):
        super().__init__()
        same = dict(kernel_size=k, padding="same")
        self.layer1 = nn.Sequential(nn.Conv2d(nic, nf, **same), nn.MaxPool2d(2), nn.BatchNorm2d(nf), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(nf, 2 * nf, **same), nn.MaxPool2d(2), nn.BatchNorm2d(2 * nf), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(2 * nf, nf, **same), nn.Upsample(scale_factor=2), nn.BatchNorm2d(nf), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(nf, nc, **same), nn.Upsample(scale_factor=2), nn.BatchNorm2d(nc), nn.ReLU())
        self.layer5 = nn.Conv2d(nc, nc, **same)

    def forward(self, x):
        return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class ConvTransposeNet(nn.Module):
    def __init__(self, k, nf, nc, nic, unet=False):
        super().__init__()
        p, op = strided_padding(k), output_padding(k)
        down = dict(kernel_size=k, stride=2, padding=p)
        up = dict(kernel_size=k, stride=2, padding=p, output_padding=op)
        self.unet = unet
        self.layer1 = nn.Sequential(nn.Conv2d(nic, nf, **down), nn.BatchNorm2d(nf), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(nf, 2 * nf, **down), nn.BatchNorm2d(2 * nf), nn.ReLU())
        self.layer3 = nn.Sequential(nn.ConvTranspose2d(2 * nf, nf, **up), nn.BatchNorm2d(nf), nn.ReLU())
        self.layer4 = nn.Sequential(nn.ConvTranspose2d(2 * nf if unet else nf, nc, **up), nn.BatchNorm2d(nc), nn.ReLU())
        self.layer5 = nn.Conv2d(nc + nic if unet else nc, nc, kernel_size=k, padding="same")

    def forward(self, x):
        h1 = self.layer1(x)
        h2 = self.layer2(h1)
        h3 = self.layer3(h2)
        if self.unet:
            h3 = torch.cat([h3, h1], 1)
        h4 = self.layer4(h3)
        if self.unet:
            h4 = torch.cat([h4, x], 1)
        return self.layer5(h4)


def build(kind, k, nf, nc, nic):
    if kind == "pool-upsample":
        return PoolUpsampleNet(k, nf, nc, nic)
    return ConvTransposeNet(k, nf, nc, nic, unet=(kind == "unet"))


def colour_case(name, kind, k, nf=8, nc=24, nic=1, n=2, h=16, w=12, seed=0):
    torch.manual_seed(seed)
    net = build(kind, k, nf, nc, nic)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(1.0 + 0.3 * torch.randn(c))
                mod.bias.copy_(0.2 * torch.randn(c))
                mod.running_mean.copy_(0.1 * torch.randn(c))
                mod.running_var.copy_(0.5 + torch.rand(c))
    state = {k2: v.clone() for k2, v in net.state_dict().items() if not k2.endswith("num_batches_tracked")}
    x = torch.rand(n, nic, h, w)
    target = torch.randint(0, nc, (n, h, w))
    net.train()
    logits = net(x)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    t = {f"param.{k2}": v.contiguous() for k2, v in state.items()}
    t.update({f"grad.{k2}": p.grad.clone() for k2, p in net.named_parameters()})
    t.update({f"after.{k2}": v.clone() for k2, v in net.state_dict().items() if "running" in k2})
    net.eval()
    with torch.no_grad():
        t["logits_eval"] = net(x)
    t["x"] = x
    t["target"] = target.to(torch.int64)
    t["logits_train"] = logits.detach()
    t["loss"] = loss.detach().reshape(1)
    meta = dict(kind=kind, kernel=str(k), nf=str(nf), nc=str(nc), nic=str(nic))
    save_file({a: b.contiguous() for a, b in t.items()}, str(OUT / f"colour_{name}.safetensors"), metadata=meta)
    print(name, kind, k, float(loss))


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


colour_case("pool_k3", "pool-upsample", 3)
colour_case("pool_k2", "pool-upsample", 2, seed=1)
colour_case("convt_k3", "conv-transpose", 3, seed=2)
colour_case("convt_k4", "conv-transpose", 4, seed=3)
colour_case("unet_k3", "unet", 3, seed=4)
colour_case("unet_k5", "unet", 5, seed=5)
ops_case()
