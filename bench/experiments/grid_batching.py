"""Should a grid train configurations together? Measures it on this CPU.

    python bench/experiments/grid_batching.py [--cache features/mvsa-train.h5]

Trains the 9 (lr, weight decay) configurations of one architecture one by one with mmfuse's
Head, and together as stacked parameters under torch.func.vmap with a hand-written batched AdamW
(no clipping or schedule, so the comparison favours vmap), one torch thread each way, 10 epochs.
mmfuse's grid trains one by one in parallel processes because that measured faster here.
Skips (exit 0) when the cache is absent.
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_cache, cpu_line, parser
from mmfuse.heads import FeatureSet, Head, HeadConfig, create_head

ap = parser(__doc__)
add_cache(ap)
args = ap.parse_args()
if not Path(args.cache).is_file():
    print(f"skip: no cache at {args.cache} (bench/speed/heads.py builds it)")
    sys.exit(0)
torch.set_num_threads(1)
print(cpu_line(), flush=True)
data = FeatureSet.from_cache(args.cache, "mean")
tr = data.subset(np.arange(2700))
Xt = torch.from_numpy((tr.text - tr.text.mean(0)) / (tr.text.std(0) + 1e-6)).float()
Xi = torch.from_numpy((tr.image - tr.image.mean(0)) / (tr.image.std(0) + 1e-6)).float()
y = torch.from_numpy(tr.y)
lrs = [1e-4, 3e-4, 1e-3]; wds = [0, 1e-4, 1e-2]
grid = [(a, b) for a in lrs for b in wds]; K = len(grid); EPOCHS = 10
for fusion in ("concat", "weighted"):
    cfgs = [HeadConfig(fusion=fusion, lr=a, weight_decay=b, epochs=EPOCHS, patience=100, precision="fp32") for a, b in grid]
    t0 = time.perf_counter()
    for c in cfgs:
        Head(c).fit(tr)
    seq = time.perf_counter() - t0
    torch.manual_seed(0)
    mods = [create_head(fusion, Xt.shape[1], Xi.shape[1], 3, cfgs[0]) for _ in range(K)]
    params, buffers = stack_module_state(mods)
    base = copy.deepcopy(mods[0]).to("meta")
    def f(p, b, t, i):
        return functional_call(base, (p, b), (t, i)).logits
    fwd = vmap(f, in_dims=(0, 0, None, None), randomness="different")
    lr = torch.tensor([a for a, _ in grid]); wd = torch.tensor([b for _, b in grid])
    m = {k: torch.zeros_like(v) for k, v in params.items()}; v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    step = 0
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(y))
        for s in range(0, len(y), 64):
            idx = perm[s:s+64]
            logits = fwd(params, buffers, Xt[idx], Xi[idx])  # (K, B, C)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y[idx].repeat(K), reduction="sum") / len(idx)
            grads = torch.autograd.grad(loss, list(params.values()))
            step += 1
            with torch.no_grad():
                for (k, p), g in zip(params.items(), grads):
                    shape = (K,) + (1,) * (p.dim() - 1)
                    m[k].lerp_(g, 0.1); v2[k].mul_(0.999).addcmul_(g, g, value=0.001)
                    p.mul_(1 - (lr * wd).view(shape))
                    denom = (v2[k] / (1 - 0.999 ** step)).sqrt_().add_(1e-8)
                    p.addcdiv_(m[k] / (1 - 0.9 ** step), denom * (1 / lr).view(shape), value=-1)
    together = time.perf_counter() - t0
    print(f"{fusion}: {K} configs x {EPOCHS} epochs: one by one {seq:.2f} s, together (vmap) {together:.2f} s, ratio {seq / together:.2f}", flush=True)
