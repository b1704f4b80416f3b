"""PyTorch side of the segmentation forward benchmark (pixclass side:
`cargo run --release -p pixclass-models --example seg_forward_timing`):
eval-mode forwards over the same table of rows (`ROWS`: MobileNetV2 at 257
and 224, ResNet-101 at 224 and 520, batch 1 and 8), median milliseconds of a
fixed number of runs per row after one warm-up, on `--threads` threads
(printed as `THREADS n`, read back from torch); then the head fine-tuning
micro step.

- torchvision `deeplabv3_resnet101` (untrained weights: the time does not
  depend on them; no auxiliary head, which torchvision's forward would run);
- the DeepLabV3-MobileNetV2 VOC model in PyTorch ops (`tflite_graph.py`).

    python crates/pixclass-models/benches/torch_seg_forward.py --threads 2 --data ../shared/data [--device cuda]

On a GPU each timed run ends with `torch.cuda.synchronize()`.
"""
import argparse
import sys
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tflite_graph  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default="../shared/data")
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
p.add_argument("--only", default=None, help="the rows whose name contains this text")
args = p.parse_args()
torch.set_num_threads(args.threads)
print(f"THREADS {torch.get_num_threads()}", flush=True)
dev = torch.device(args.device)

# (model, side, batch, timed runs): the same table as seg_forward_timing.rs.
ROWS = [
    ("deeplabv3-mobilenetv2-voc", 257, 1, 10),
    ("deeplabv3-mobilenetv2-voc", 224, 1, 10),
    ("deeplabv3-mobilenetv2-voc", 257, 8, 5),
    ("deeplabv3-mobilenetv2-voc", 224, 8, 5),
    ("deeplabv3-resnet101", 224, 1, 5),
    ("deeplabv3-resnet101", 520, 1, 3),
    ("deeplabv3-resnet101", 224, 8, 3),
    ("deeplabv3-resnet101", 520, 8, 2),
]


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_ms(f, runs=10):
    with torch.no_grad():
        f()
        sync()
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            f()
            sync()
            ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


out = {}
mb = tflite_graph.load(args.data, dev)
r101 = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=False).eval().to(dev)
for model, side, batch, runs in ROWS:
    name = f"{model} forward {side}x{side} batch {batch}"
    if args.only is not None and args.only not in name:
        continue
    x = (torch.rand(batch, 3, side, side) * 2 - 1).to(dev)
    if model == "deeplabv3-resnet101":
        out[name] = median_ms(lambda: r101(x)["out"], runs)
    else:
        with torch.no_grad():
            assert mb(x).shape == (batch, 21, side, side)
        out[name] = median_ms(lambda: mb(x), runs)
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


if args.only is None or args.only in "deeplab head fine-tuning step":
    out["deeplab head fine-tuning step"] = median_ms(head_step)
for k, v in out.items():
    print(f"BENCH {k}\t{v}")
