"""Golden fixture for pixclass's DeepLabV3-MobileNetV2 (VOC) port.

The oracle is the plain NumPy interpreter of the TFLite graph that ships with
the model (`reference_forward_numpy.py`, which agrees with the official TFLite
runtime to 4e-5). For four real photos (Oxford-17 images 0421, 0661 and 1201,
where the model sees potted plants or a bird, and CIFAR-10 test horse no. 3,
upscaled, where it finds the horse) the fixture holds the 257x257 RGB input exactly as the interpreter saw it (PIL bilinear resize, uint8), the
logits on every 8th row and column (33x33x21) and the full argmax map.

Run from the repository root (needs numpy, pillow, safetensors):
    python crates/pixclass-models/tests/golden/make_mobilenet_golden.py ../shared/data
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

OUT = Path(__file__).resolve().parent
IMAGES = [
    "flowers17/jpg/image_0421.jpg",
    "cifar10/horse_test.bin:3",
    "flowers17/jpg/image_0661.jpg",
    "flowers17/jpg/image_1201.jpg",
]


def load_rgb(data: Path, name: str) -> Image.Image:
    if ":" in name:
        path, index = name.split(":")
        raw = np.fromfile(data / path, np.uint8).reshape(-1, 3073)
        return Image.fromarray(raw[int(index), 1:].reshape(3, 32, 32).transpose(1, 2, 0))
    return Image.open(data / name).convert("RGB")


def main(data: Path) -> None:
    model_dir = data / "pretrained" / "deeplabv3_mobilenetv2_voc"
    spec = importlib.util.spec_from_file_location("ref", model_dir / "reference_forward_numpy.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    graph = json.load(open(model_dir / "deeplabv3_257_mv_gpu.graph.json"))
    weights = load_file(model_dir / "deeplabv3_257_mv_gpu.weights.safetensors")
    tensors = {}
    for k, name in enumerate(IMAGES):
        img = load_rgb(data, name).resize((257, 257), Image.BILINEAR)
        rgb = np.asarray(img, np.uint8)
        logits = ref.run(graph, weights, ((rgb.astype(np.float32) - 127.5) / 127.5)[None])[0]
        tensors[f"img{k}/input"] = np.ascontiguousarray(rgb)
        tensors[f"img{k}/logits_sub"] = np.ascontiguousarray(logits[::8, ::8].astype(np.float32))
        tensors[f"img{k}/argmax"] = logits.argmax(-1).astype(np.uint8)
        print(name, "pixels per class", np.bincount(logits.argmax(-1).ravel(), minlength=21))
    save_file(tensors, OUT / "mobilenet_voc.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
