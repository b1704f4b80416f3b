"""Per-op time of one UNet training step in PyTorch (`torch.profiler`): the
study's UNet (`torch_colour_reference.py`'s definition), batch 100 of 1x32x32,
24 colours, forward + cross-entropy + backward + Adam, on `--threads` threads.
Prints the ops' self CPU time per step, largest first, as
`OP name<TAB>ms per step` rows (the pixclass side:
`cargo run --release -p pixclass-train --example step_timing -- --model unet --profile`;
`cargo xtask bench --only profile` runs both and docs/PERFORMANCE.md puts them
side by side).

    python crates/pixclass-train/benches/torch_unet_profile.py --threads 2
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=10)
args = p.parse_args()

# The study's nets, without running the reference program: import its
# classes by executing only the definitions (everything before the data).
src = (Path(__file__).resolve().parent / "torch_colour_reference.py").read_text()
defs = src[src.index("# --- the study's models") : src.index("# --- the study's helpers")]
ns = {"nn": torch.nn, "torch": torch}
exec(defs, ns)
torch.set_num_threads(args.threads)
print(f"THREADS {torch.get_num_threads()}", flush=True)

torch.manual_seed(0)
net = ns["UNet"](3, 32, 24, 1)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.rand(100, 1, 32, 32)
y = torch.randint(0, 24, (100, 32, 32))


def step():
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
        step()
rows = {}
for e in prof.key_averages():
    rows[e.key] = rows.get(e.key, 0.0) + e.self_cpu_time_total / 1e3 / args.steps
total = sum(rows.values())
for k, v in sorted(rows.items(), key=lambda kv: -kv[1]):
    if v >= 0.005 * total:
        print(f"OP {k}\t{v:.2f}")
print(f"OP total\t{total:.2f}")
