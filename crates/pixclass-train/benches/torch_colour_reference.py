"""The reference colourization program (SPEC §A.4) in PyTorch, on the same
CIFAR-10 horse files pixclass reads: the cross-check for the Parts A-C numbers
(`cargo xtask crosscheck`) and the PyTorch side of the colourization-run rows
of `cargo xtask bench`.

It is the study's code as written (CSC413/2516 PA2), not pixclass's golden
script: its own model definitions (`padding = kernel // 2`,
`output_padding=1`, `nn.Upsample`), numpy arrays turned into tensors batch by
batch (`get_torch_vars`), the loss through `compute_loss`'s transposed view,
`torch.max` accuracy, and the notebook's train/eval switching. Data as in the
study: pixels / 256, grey = mean of RGB, targets = nearest k-means colour,
each split shuffled once with NumPy's global RNG (`npr.seed(seed)`); the model
is built after `torch.manual_seed(seed)` (the same parameter order as
pixclass's nets, so `--rng torch` runs start from the same weights). Adam
(lr 1e-3), batch 100, consecutive slices.

Prints one line per epoch, a `FINAL` line, the thread count (`THREADS n`) and
machine-readable timing rows (`BENCH name<TAB>ms`):

    python crates/pixclass-train/benches/torch_colour_reference.py \
        --data-dir ../shared/data --model pool-upsample --seeds 0,1,2 [--threads 2]
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import numpy.random as npr
import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--data-dir", required=True)
p.add_argument("--model", default="pool-upsample", choices=["pool-upsample", "conv-transpose", "unet"])
p.add_argument("--seeds", default="0")
p.add_argument("--epochs", type=int, default=25)
p.add_argument("--batch-size", type=int, default=100)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)
print(f"THREADS {torch.get_num_threads()}", flush=True)


# --- the study's models -----------------------------------------------------
class PoolUpsampleNet(nn.Module):
    def __init__(self, kernel, num_filters, num_colours, num_in_channels):
        super().__init__()
        padding = kernel // 2
        self.layer1 = nn.Sequential(
            nn.Conv2d(num_in_channels, num_filters, kernel_size=kernel, padding=padding),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(num_filters, 2 * num_filters, kernel_size=kernel, padding=padding),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(2 * num_filters),
            nn.ReLU(),
        )
        self.layer3 = nn.Sequential(
            nn.Conv2d(2 * num_filters, num_filters, kernel_size=kernel, padding=padding),
            nn.Upsample(scale_factor=2),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer4 = nn.Sequential(
            nn.Conv2d(num_filters, num_colours, kernel_size=kernel, padding=padding),
            nn.Upsample(scale_factor=2),
            nn.BatchNorm2d(num_colours),
            nn.ReLU(),
        )
        self.layer5 = nn.Conv2d(num_colours, num_colours, kernel_size=kernel, padding=padding)

    def forward(self, x):
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        return self.layer5(out4)


class ConvTransposeNet(nn.Module):
    def __init__(self, kernel, num_filters, num_colours, num_in_channels):
        super().__init__()
        padding = kernel // 2
        self.layer1 = nn.Sequential(
            nn.Conv2d(num_in_channels, num_filters, kernel_size=kernel, stride=2, padding=padding),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(num_filters, 2 * num_filters, kernel_size=kernel, stride=2, padding=padding),
            nn.BatchNorm2d(2 * num_filters),
            nn.ReLU(),
        )
        self.layer3 = nn.Sequential(
            nn.ConvTranspose2d(2 * num_filters, num_filters, kernel_size=kernel, stride=2, padding=padding, output_padding=1),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer4 = nn.Sequential(
            nn.ConvTranspose2d(num_filters, num_colours, kernel_size=kernel, stride=2, padding=padding, output_padding=1),
            nn.BatchNorm2d(num_colours),
            nn.ReLU(),
        )
        self.layer5 = nn.Conv2d(num_colours, num_colours, kernel_size=kernel, padding=padding)

    def forward(self, x):
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        return self.layer5(out4)


class UNet(nn.Module):
    def __init__(self, kernel, num_filters, num_colours, num_in_channels):
        super().__init__()
        padding = kernel // 2
        self.layer1 = nn.Sequential(
            nn.Conv2d(num_in_channels, num_filters, kernel_size=kernel, stride=2, padding=padding),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(num_filters, 2 * num_filters, kernel_size=kernel, stride=2, padding=padding),
            nn.BatchNorm2d(2 * num_filters),
            nn.ReLU(),
        )
        self.layer3 = nn.Sequential(
            nn.ConvTranspose2d(2 * num_filters, num_filters, kernel_size=kernel, stride=2, padding=padding, output_padding=1),
            nn.BatchNorm2d(num_filters),
            nn.ReLU(),
        )
        self.layer4 = nn.Sequential(
            nn.ConvTranspose2d(2 * num_filters, num_colours, kernel_size=kernel, stride=2, padding=padding, output_padding=1),
            nn.BatchNorm2d(num_colours),
            nn.ReLU(),
        )
        self.layer5 = nn.Conv2d(num_colours + num_in_channels, num_colours, kernel_size=kernel, padding=padding)

    def forward(self, x):
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(torch.cat((out3, out1), dim=1))
        return self.layer5(torch.cat((out4, x), dim=1))


NETS = {"pool-upsample": PoolUpsampleNet, "conv-transpose": ConvTransposeNet, "unet": UNet}


# --- the study's helpers ----------------------------------------------------
def get_torch_vars(xs, ys):
    return torch.from_numpy(xs).float(), torch.from_numpy(ys).long()


def compute_loss(criterion, outputs, labels, batch_size, num_colours):
    loss_out = outputs.transpose(1, 3).contiguous().view([batch_size * 32 * 32, num_colours])
    loss_lab = labels.transpose(1, 3).contiguous().view([batch_size * 32 * 32])
    return criterion(loss_out, loss_lab)


def get_batch(x, y, batch_size):
    for i in range(len(x) // batch_size):
        yield x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size]


def run_validation_step(cnn, criterion, x_test, y_test, batch_size, num_colours):
    correct, total, losses = 0.0, 0.0, []
    for xs, ys in get_batch(x_test, y_test, batch_size):
        images, labels = get_torch_vars(xs, ys)
        outputs = cnn(images)
        losses.append(compute_loss(criterion, outputs, labels, batch_size, num_colours).data.item())
        _, predicted = torch.max(outputs.data, 1, keepdim=True)
        total += labels.size(0) * 32 * 32
        correct += (predicted == labels.data).sum().item()
    return np.mean(losses), 100 * correct / total


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
    return grey, cat[:, None, :, :]


bs, nc = args.batch_size, 24
for seed in [int(s) for s in args.seeds.split(",")]:
    t_data = time.perf_counter()
    npr.seed(seed)
    train_x, train_y = process(load("horse_train.bin"))
    val_x, val_y = process(load("horse_test.bin"))
    data_ms = (time.perf_counter() - t_data) * 1e3
    torch.manual_seed(seed)
    cnn = NETS[args.model](3, 32, nc, 1)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    t0 = time.time()
    epoch_ms = []
    for epoch in range(1, args.epochs + 1):
        te = time.perf_counter()
        cnn.train()
        losses = []
        for xs, ys in get_batch(train_x, train_y, bs):
            images, labels = get_torch_vars(xs, ys)
            optimizer.zero_grad()
            outputs = cnn(images)
            loss = compute_loss(criterion, outputs, labels, bs, nc)
            loss.backward()
            optimizer.step()
            losses.append(loss.data.item())
        cnn.eval()
        with torch.no_grad():
            vl, acc = run_validation_step(cnn, criterion, val_x, val_y, bs, nc)
        epoch_ms.append((time.perf_counter() - te) * 1e3)
        print(f"seed {seed} epoch {epoch}: train {np.mean(losses):.4f} val {vl:.4f} acc {acc:.2f}% ({time.time() - t0:.0f} s)", flush=True)
    print(f"FINAL {args.model} seed {seed}: val_loss {vl:.4f} val_acc {acc:.2f}", flush=True)
    print(f"BENCH {args.model} data preparation\t{data_ms}")
    print(f"BENCH {args.model} epoch (train + val)\t{statistics.median(epoch_ms)}")
    print(f"EPOCHS_MS {' '.join(f'{t:.1f}' for t in epoch_ms)}", flush=True)
