"""PyTorch side of the segmentation forward benchmark (pixclass side:
`cargo run --release -p pixclass-models --example seg_forward_timing`):
eval-mode forward of 1x3x224x224, median milliseconds of 10 runs after 2
warm-ups, on `--threads` threads.

- torchvision `deeplabv3_resnet101` (untrained weights: the time does not
  depend on them);
- the DeepLabV3-MobileNetV2 VOC model in PyTorch ops, built from the same
  graph.json and weights as pixclass's port (TF "SAME" padding with F.pad,
  depthwise convs as grouped convs, align_corners=True resizing).

    python crates/pixclass-models/benches/torch_seg_forward.py --threads 2 --data ../shared/data [--device cuda]

On a GPU each timed run ends with `torch.cuda.synchronize()`.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default="../shared/data")
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
args = p.parse_args()
torch.set_num_threads(args.threads)
dev = torch.device(args.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_ms(f):
    with torch.no_grad():
        for _ in range(2):
            f()
        sync()
        ts = []
        for _ in range(10):
            t = time.perf_counter()
            f()
            sync()
            ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def same_pad(n, k, s, d):
    eff = (k - 1) * d + 1
    out = -(-n // s)
    tot = max((out - 1) * s + eff - n, 0)
    return tot // 2, tot - tot // 2


class TfliteGraph(torch.nn.Module):
    def __init__(self, graph, weights):
        super().__init__()
        self.g = graph
        self.w = {}
        for k, v in weights.items():
            if k.endswith("/depthwise_weights"):
                self.w[k] = v.permute(3, 0, 1, 2).contiguous().to(dev)
            elif k.endswith("/weights"):
                self.w[k] = v.permute(0, 3, 1, 2).contiguous().to(dev)
            else:
                self.w[k] = v.to(dev)

    def forward(self, x):
        T = self.g["tensors"]
        vals = {self.g["inputs"][0]: x}
        get = lambda i: vals[i] if i in vals else self.w[T[i]["name"]]
        act = {"NONE": lambda v: v, "RELU": F.relu, "RELU6": lambda v: F.hardtanh(v, 0.0, 6.0)}
        for op in self.g["ops"]:
            o, ins, k = op["options"], op["inputs"], op["op"]
            if k in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                x0, w, b = get(ins[0]), get(ins[1]), get(ins[2])
                kh, kw = w.shape[2], w.shape[3]
                (s, _), (d, _) = o["stride"], o["dilation"]
                pt, pb = same_pad(x0.shape[2], kh, s, d)
                pl, pr = same_pad(x0.shape[3], kw, s, d)
                x0 = F.pad(x0, (pl, pr, pt, pb))
                groups = x0.shape[1] if k == "DEPTHWISE_CONV_2D" else 1
                y = F.conv2d(x0, w, b, stride=s, dilation=d, groups=groups)
            elif k == "ADD":
                y = get(ins[0]) + get(ins[1])
            elif k == "AVERAGE_POOL_2D":
                y = get(ins[0]).mean((2, 3), keepdim=True)
            elif k == "CONCATENATION":
                y = torch.cat([get(i) for i in ins], 1)
            elif k == "RESIZE_BILINEAR":
                # Sizes follow the input: output stride 8 inside, the input size last.
                last = op is self.g["ops"][-1]
                size = tuple(x.shape[2:]) if last else (-(-x.shape[2] // 8), -(-x.shape[3] // 8))
                y = F.interpolate(get(ins[0]), size=size, mode="bilinear", align_corners=True)
            else:
                raise NotImplementedError(k)
            vals[op["outputs"][0]] = act[o.get("activation", "NONE")](y)
        return vals[self.g["outputs"][0]]


x = (torch.rand(1, 3, 224, 224) * 2 - 1).to(dev)
out = {}
d = Path(args.data) / "pretrained" / "deeplabv3_mobilenetv2_voc"
mb = TfliteGraph(json.load(open(d / "deeplabv3_257_mv_gpu.graph.json")), load_file(d / "deeplabv3_257_mv_gpu.weights.safetensors")).eval()
assert mb(x).shape == (1, 21, 224, 224)
out["deeplabv3-mobilenetv2-voc"] = median_ms(lambda: mb(x))
r101 = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=True).eval().to(dev)
out["deeplabv3-resnet101"] = median_ms(lambda: r101(x)["out"])
# One fine-tuning step of the 2-class head on cached features (batch 128).
f = torch.rand(128, 256, 28, 28, device=dev)
yy = torch.randint(0, 2, (128, 224, 224), device=dev)
conv = torch.nn.Conv2d(256, 2, 1).to(dev)
opt = torch.optim.Adam(conv.parameters(), lr=0.05)


def head_step():
    with torch.enable_grad():
        opt.zero_grad()
        logits = F.interpolate(conv(f), size=(224, 224), mode="bilinear", align_corners=True)
        F.cross_entropy(logits, yy).backward()
        opt.step()


out["deeplab head fine-tuning step"] = median_ms(head_step)
for k, v in out.items():
    print(f"BENCH {k if 'step' in k else k + ' forward 224'}\t{v}")
