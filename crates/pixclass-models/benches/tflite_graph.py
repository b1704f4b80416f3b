"""The DeepLabV3-MobileNetV2 VOC model in PyTorch ops, built from the same
graph.json and weights as pixclass's port (TF "SAME" padding with F.pad,
depthwise convs as grouped convs, align_corners=True resizing): the PyTorch
side of the segmentation benchmarks (`torch_seg_forward.py`,
`crates/pixclass-train/benches/torch_seg_features.py`).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def same_pad(n, k, s, d):
    eff = (k - 1) * d + 1
    out = -(-n // s)
    tot = max((out - 1) * s + eff - n, 0)
    return tot // 2, tot - tot // 2


class TfliteGraph(torch.nn.Module):
    def __init__(self, graph, weights, dev):
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

    def forward(self, x, features=False):
        """Logits at the input size; `features`: the 256-channel features
        before the logits conv (what pixclass's `features` returns)."""
        T = self.g["tensors"]
        vals = {self.g["inputs"][0]: x}
        get = lambda i: vals[i] if i in vals else self.w[T[i]["name"]]
        act = {"NONE": lambda v: v, "RELU": F.relu, "RELU6": lambda v: F.hardtanh(v, 0.0, 6.0)}
        for op in self.g["ops"]:
            o, ins, k = op["options"], op["inputs"], op["op"]
            if features and len(ins) > 1 and T[ins[1]]["name"].startswith("logits/"):
                return get(ins[0])
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




def load(data, dev):
    d = Path(data) / "pretrained" / "deeplabv3_mobilenetv2_voc"
    graph = json.load(open(d / "deeplabv3_257_mv_gpu.graph.json"))
    return TfliteGraph(graph, load_file(d / "deeplabv3_257_mv_gpu.weights.safetensors"), dev).eval()
