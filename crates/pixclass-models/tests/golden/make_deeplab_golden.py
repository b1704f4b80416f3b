"""Golden fixture for pixclass's DeepLabV3-ResNet101 (torchvision layout).

No 240 MB checkpoint is committed: every tensor of the state dict is set by a
closed-form formula of its name and element index, implemented identically
in `tests/deeplab.rs`. BatchNorm statistics are not the identity. The fixture
holds the input, the logits, the auxiliary logits and the 256-channel
features before the final 1x1 conv, all from torchvision in eval mode.

Run from the repository root:
    python crates/pixclass-models/tests/golden/make_deeplab_golden.py
"""
import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent
torch.set_num_threads(2)


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def formula(name: str, shape) -> np.ndarray:
    n = int(np.prod(shape))
    phase = (fnv1a(name) % 100003) / 100003.0 * 2.0 * math.pi
    base = np.sin(phase + 0.37 * np.arange(n, dtype=np.float64))
    if name.endswith("running_var"):
        v = 1.0 + 0.5 * np.abs(base)
    elif name.endswith("running_mean"):
        v = 0.05 * base
    elif len(shape) == 1 and name.endswith("weight"):
        v = 1.0 + 0.2 * base
    elif len(shape) == 1:
        v = 0.05 * base
    else:
        fan_in = n // shape[0]
        v = base / math.sqrt(fan_in)
    return v.astype(np.float32).reshape(shape)


def main():
    model = torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = v
        else:
            new[k] = torch.from_numpy(formula(k, tuple(v.shape)))
    model.load_state_dict(new)
    model.eval()
    h, w = 48, 64
    x = torch.from_numpy(np.sin(0.1 * np.arange(3 * h * w, dtype=np.float64)).astype(np.float32).reshape(1, 3, h, w))
    feats = {}
    model.classifier[3].register_forward_hook(lambda m, i, o: feats.__setitem__("f", o.detach().clone()))
    with torch.no_grad():
        out = model(x)
    t = {
        "x": x,
        "logits": out["out"].contiguous(),
        "aux_sub": out["aux"][:, :, ::4, ::4].contiguous(),
        "features": feats["f"].contiguous(),
    }
    save_file(t, str(OUT / "deeplab_r101.safetensors"))
    print({k: tuple(v.shape) for k, v in t.items()}, float(out["out"].abs().max()), float(feats["f"].std()))


main()
