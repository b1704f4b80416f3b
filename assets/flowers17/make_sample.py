"""Builds `assets/flowers17/sample.tar`: 48 real Oxford-17 photos with their
(approximate) trimaps, downscaled so the longer side is 256 pixels (photos
with Pillow's bilinear filter, trimaps with nearest, so they keep their
palette colours), plus a `splits.json` (36 train / 12 val) in the layout of
`../shared/data/flowers17`. The ids are spread over the 17 classes: every
17th train id and every 17th val id of the shared split.

Run from the repository root:
    python assets/flowers17/make_sample.py ../shared/data/flowers17
"""
import io
import json
import sys
import tarfile
from pathlib import Path

from PIL import Image

SIDE = 256


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main(src: Path) -> None:
    splits = json.load(open(src / "splits.json"))
    train = splits["train"][::17][:36]
    val = splits["val"][::17][:12]
    out = Path(__file__).resolve().parent / "sample.tar"
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sid in train + val:
            img = Image.open(src / "jpg" / f"{sid}.jpg").convert("RGB")
            tri = Image.open(src / "trimaps" / f"{sid}.png")
            scale = SIDE / max(img.size)
            size = (round(img.width * scale), round(img.height * scale))
            buf = io.BytesIO()
            img.resize(size, Image.BILINEAR).save(buf, "JPEG", quality=92)
            add(tar, f"jpg/{sid}.jpg", buf.getvalue())
            buf = io.BytesIO()
            tri.resize(size, Image.NEAREST).save(buf, "PNG", optimize=True)
            add(tar, f"trimaps/{sid}.png", buf.getvalue())
        meta = {
            "description": "Embedded sample of Oxford-17 (48 photos, longer side 256, approximate trimaps): "
            "every 17th train and val id of ../shared/data/flowers17/splits.json.",
            "train": train,
            "val": val,
        }
        add(tar, "splits.json", json.dumps(meta, indent=1).encode())
    print(out, out.stat().st_size, "bytes;", len(train), "train", len(val), "val")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/flowers17"))
