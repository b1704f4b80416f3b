"""PyTorch side of the colourization step benchmark: the same three nets as
pixclass (tests/golden/make_colour_golden.py defines them), batch 100,
1x32x32 input, NF 32, 24 classes; training step (forward + loss + backward +
Adam) and inference (eval forward + argmax). Prints median milliseconds over
10 steps after 3 warm-up steps, on `--threads` threads.

    python crates/pixclass-train/benches/torch_colour_step.py --threads 2 [--device cuda]

On a GPU every timed step ends with `torch.cuda.synchronize()`.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import importlib.util

spec = importlib.util.spec_from_file_location(
    "golden", Path(__file__).resolve().parents[2] / "pixclass-models/tests/golden/make_colour_golden.py"
)

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
args = p.parse_args()
torch.set_num_threads(args.threads)
dev = torch.device(args.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)  # defines the nets; generates nothing
ns = vars(golden)
# Read back after the import: `cargo xtask bench` fails unless this is --threads.
print(f"THREADS {torch.get_num_threads()}", flush=True)

for kind in ["pool-upsample", "conv-transpose", "unet"]:
    torch.manual_seed(0)
    net = ns["build"](kind, 3, 32, 24, 1).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(100, 1, 32, 32, device=dev)
    y = torch.randint(0, 24, (100, 32, 32), device=dev)
    train, infer = [], []
    for i in range(3 + args.steps):
        net.train()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sync()
        t1 = time.perf_counter()
        net.eval()
        with torch.no_grad():
            net(x).argmax(1)
        sync()
        t2 = time.perf_counter()
        if i >= 3:
            train.append((t1 - t0) * 1e3)
            infer.append((t2 - t1) * 1e3)
    t, i = statistics.median(train), statistics.median(infer)
    print(f"{kind}: train step {t:.1f} ms, inference {i:.1f} ms (torch {torch.__version__}, {args.device}, {args.threads} threads)")
    # Machine-readable rows for `cargo xtask bench`.
    print(f"BENCH {kind} train step\t{t}")
    print(f"BENCH {kind} inference\t{i}")
