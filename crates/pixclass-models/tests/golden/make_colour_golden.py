"""Golden fixtures for pixclass's colourization nets, made by PyTorch.

Run from the repository root with a Python that has torch and safetensors
(see DEVELOPERS.md):

    python crates/pixclass-models/tests/golden/make_colour_golden.py

For each case it builds the PyTorch equivalent of a pixclass net (same
parameter names), perturbs BatchNorm so it is not the identity, and saves the
state dict, an input batch, random targets, the train-mode logits, the
cross-entropy loss, the gradient of every parameter, the running statistics
after the train step, and eval-mode logits. The ops' own fixture is made by
``crates/pixclass-ops/tests/golden/make_ops_golden.py``.

Importing this module (the benchmarks do, for ``build``) runs nothing.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent


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


def main():
    # One thread: the fixtures' sums then have one fixed order. Only when run
    # as a script: the benchmarks import this module for its nets and must
    # keep their own thread counts.
    torch.set_num_threads(1)
    colour_case("pool_k3", "pool-upsample", 3)
    colour_case("pool_k2", "pool-upsample", 2, seed=1)
    colour_case("convt_k3", "conv-transpose", 3, seed=2)
    colour_case("convt_k4", "conv-transpose", 4, seed=3)
    colour_case("unet_k3", "unet", 3, seed=4)
    colour_case("unet_k5", "unet", 5, seed=5)


if __name__ == "__main__":
    main()
