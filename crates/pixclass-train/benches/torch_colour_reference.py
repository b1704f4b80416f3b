"""The reference colourization training (SPEC §A.4) in PyTorch, on the same
CIFAR-10 horse files pixclass reads: a cross-check for the Parts A-C numbers.

It follows the original assignment code: pixels / 256, grey = mean of RGB,
targets = nearest k-means colour, each split shuffled once with NumPy's global
RNG (`npr.seed(seed)`), the model built after `torch.manual_seed(seed)`,
Adam (lr 1e-3), batch 100 with consecutive slices, 25 epochs, BN train/eval
switching. Prints one line per epoch and a final `FINAL` line:

    python crates/pixclass-train/benches/torch_colour_reference.py \
        --data-dir ../shared/data --model pool-upsample --seeds 0,1,2
"""
import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import numpy.random as npr
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--data-dir", required=True)
p.add_argument("--model", default="pool-upsample")
p.add_argument("--seeds", default="0")
p.add_argument("--epochs", type=int, default=25)
p.add_argument("--batch-size", type=int, default=100)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)

spec = importlib.util.spec_from_file_location(
    "golden", Path(__file__).resolve().parents[2] / "pixclass-models/tests/golden/make_colour_golden.py"
)
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)  # defines the nets; generates nothing
ns = vars(golden)

data = Path(args.data_dir)
colours = np.load(data / "colours/kmeans24_cat7_f64.npy")


def load(name):
    raw = np.fromfile(data / "cifar10" / name, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32)


def process(xs):
    xs = xs / 256.0
    npr.shuffle(xs)
    grey = np.mean(xs, axis=1, keepdims=True)
    rgb = np.transpose(xs, [0, 2, 3, 1])[:, :, :, None, :]
    cat = np.argmin(np.linalg.norm(rgb - colours.reshape(1, 1, 1, -1, 3), axis=4), axis=3)
    return torch.from_numpy(grey).float(), torch.from_numpy(cat).long()


for seed in [int(s) for s in args.seeds.split(",")]:
    npr.seed(seed)
    train_x, train_y = process(load("horse_train.bin"))
    val_x, val_y = process(load("horse_test.bin"))
    torch.manual_seed(seed)
    net = ns["build"](args.model, 3, 32, 24, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    bs = args.batch_size
    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        net.train()
        losses = []
        for i in range(0, len(train_x), bs):
            opt.zero_grad()
            loss = F.cross_entropy(net(train_x[i : i + bs]), train_y[i : i + bs])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        net.eval()
        vl, correct = [], 0
        with torch.no_grad():
            for i in range(0, len(val_x), bs):
                out = net(val_x[i : i + bs])
                vl.append(F.cross_entropy(out, val_y[i : i + bs]).item())
                correct += (out.argmax(1) == val_y[i : i + bs]).sum().item()
        acc = 100.0 * correct / val_y.numel()
        print(f"seed {seed} epoch {epoch}: train {np.mean(losses):.4f} val {np.mean(vl):.4f} acc {acc:.2f}% ({time.time() - t0:.0f} s)", flush=True)
    print(f"FINAL {args.model} seed {seed}: val_loss {np.mean(vl):.4f} val_acc {acc:.2f}", flush=True)
