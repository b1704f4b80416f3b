"""Golden initial weights for pixclass's `torch` init scheme.

`torch.manual_seed(seed)` followed by building each colourization net (the
PyTorch definitions of make_colour_golden.py, in the reference's module
order) draws every conv weight (kaiming_uniform_, a = sqrt(5)) and bias
(uniform_) from PyTorch's CPU MT19937 generator. This records, per
parameter, the first values (f32 values, printed exactly) and the f64 sum:

    python crates/pixclass-models/tests/golden/make_torch_init.py
"""
import importlib.util
import json
from pathlib import Path

import torch

here = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("golden", here / "make_colour_golden.py")
src = spec.loader.get_data(spec.origin).decode()
src = src[: src.index('colour_case("pool_k3"')]
ns = {"__file__": spec.origin, "__name__": "golden"}
exec(compile(src, spec.origin, "exec"), ns)

cases = []
for kind, k, seed in [("pool-upsample", 3, 0), ("conv-transpose", 3, 0), ("unet", 3, 0), ("unet", 4, 7)]:
    torch.manual_seed(seed)
    net = ns["build"](kind, k, 32, 24, 1)
    params = []
    for name, p in net.named_parameters():
        v = p.detach().double().flatten()
        params.append(
            dict(
                name=name,
                shape=list(p.shape),
                head=v[:6].tolist(),
                sum=float(v.sum()),
            )
        )
    cases.append(dict(kind=kind, kernel=k, seed=seed, params=params))
out = here / "torch_init.json"
out.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1) + "\n")
print(f"wrote {out}")
