"""PyTorch side of the Part D feature-extraction benchmark (pixclass side:
`cargo run --release -p pixclass-train --example feature_timing`): the first
64 Oxford-17 images that have a trimap (sorted by id) are decoded and resized
with PIL (photo and mask, bilinear), normalised, and the frozen backbone
computes their 256-channel features in chunks of 16 under `torch.no_grad()`:
torchvision `deeplabv3_resnet101` (`backbone` + `classifier[:-1]`, untrained
weights, at 224) and the DeepLabV3-MobileNetV2 VOC graph (at its native 257).
Median of a fixed number of runs after a warm-up of one chunk, on
`--threads` threads (printed as `THREADS n`).

    python crates/pixclass-train/benches/torch_seg_features.py --threads 2 --data ../shared/data
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pixclass-models/benches"))
import tflite_graph  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default="../shared/data")
p.add_argument("--only", default=None, help="the rows whose name contains this text")
args = p.parse_args()
torch.set_num_threads(args.threads)
print(f"THREADS {torch.get_num_threads()}", flush=True)

IMAGES = 64
root = Path(args.data) / "flowers17"
ids = sorted(f.stem for f in (root / "trimaps").glob("*.png"))[:IMAGES]
assert len(ids) == IMAGES, f"{root / 'trimaps'} has fewer than {IMAGES} trimaps"
FLOWER = np.array([128, 0, 0], dtype=np.uint8)


def extract(features, ids, size, mean, std):
    photos, masks = [], []
    for i in ids:
        img = Image.open(root / "jpg" / f"{i}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
        m = Image.open(root / "trimaps" / f"{i}.png").convert("RGB").resize((size, size), Image.BILINEAR)
        photos.append(np.asarray(img))
        masks.append((np.asarray(m) == FLOWER).all(-1))
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        for c in range(0, len(ids), 16):
            f = features(x[c : c + 16])
            assert f.shape[1] == 256, f.shape


mb = tflite_graph.load(args.data, torch.device("cpu"))
r101 = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=False).eval()
# Everything of the head but its final 1x1 conv (DeepLabHead is a Sequential
# whose slices cannot be rebuilt, so its children are taken instead).
r101_head = torch.nn.Sequential(*list(r101.classifier.children())[:-1])
rows = [
    ("deeplabv3-mobilenetv2-voc", lambda x: mb(x, features=True), 257, [0.5] * 3, [0.5] * 3, 3),
    ("deeplabv3-resnet101", lambda x: r101_head(r101.backbone(x)["out"]), 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1),
]
for name, features, size, mean, std, runs in rows:
    row = f"{name} feature extraction {IMAGES} images at {size}"
    if args.only is not None and args.only not in row:
        continue
    extract(features, ids[:16], size, mean, std)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        extract(features, ids, size, mean, std)
        ts.append((time.perf_counter() - t) * 1e3)
    t = statistics.median(ts)
    print(f"{row}: {t:.0f} ms")
    print(f"BENCH {row}\t{t}")
