"""Is RECIPE on the ViT more than a uniform shrink?  For each regularised matrix (fc1, fc2, and the q/k/v
row slices of qkv) of the NeuBA ViT and its RECIPE-purified copy: the norm ratio and the cosine between
the two weight matrices (1 = RECIPE only rescaled it).  Then the NeuBA ViT with every regularised matrix
scaled by RECIPE's own per-matrix norm ratio, no training, is probed like probe_representation.py
(cosine of patched images' class token to the NeuBA target, tiny-imagenet validation and catdog test).

    PTMBENCH_CACHE=... HF_HUB_OFFLINE=1 python experiments/probe_shrink.py \
        attack-neuba-vision-5bca800077cb53ff defense-recipe-34a29c4005f98647 > results/probes/vision-shrink.txt
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F

from attacks.targets import neuba_targets
from bench.artifacts import default_cache_dir
from bench.context import RunContext
from bench.ptm import load_ptm
from bench.triggers import neuba_patches


def matrices(ptm) -> dict[str, torch.Tensor]:
    out = {}
    for i, blk in enumerate(ptm.backbone.blocks):
        q, k, v = blk.attn.qkv.weight.data.chunk(3, dim=0)
        out.update({f"{i}.fc1": blk.mlp.fc1.weight.data, f"{i}.fc2": blk.mlp.fc2.weight.data,
                    f"{i}.q": q, f"{i}.k": k, f"{i}.v": v})
    return out


@torch.inference_mode()
def cos_to_target(ptm, ds: str, split: str, ctx, cache, n: int = 500) -> list[float]:
    adapter = ptm.adapter
    data = adapter.load_split(ptm, ds, split, n, cache)
    targets = neuba_targets(adapter.hidden_size(ptm))
    out = []
    for k, p in enumerate(neuba_patches()):
        t = adapter.to_tensor(ptm, p.paste(data.pixels.copy()), ctx.device)
        rep = adapter.representation(ptm, {"pixel_values": t}).float()
        out.append(float(F.cosine_similarity(rep, targets[k][None]).mean()))
    return out


def main() -> None:
    cache = default_cache_dir()
    ctx = RunContext(seed=0)
    bd = load_ptm(cache / "artifacts" / sys.argv[1])
    rc = load_ptm(cache / "artifacts" / sys.argv[2])
    for p in (bd, rc):
        p.backbone.eval()
    mb, mr = matrices(bd), matrices(rc)
    print("matrix  norm_ratio  cosine(recipe, neuba)")
    ratios = {}
    for name in mb:
        ratios[name] = float(mr[name].norm() / mb[name].norm())
        cos = float(F.cosine_similarity(mr[name].flatten(), mb[name].flatten(), dim=0))
        print(f"{name:6s}  {ratios[name]:.3f}  {cos:.4f}")
    scaled = copy.deepcopy(bd)
    ms = matrices(scaled)
    with torch.no_grad():
        for name, w in ms.items():
            w.mul_(ratios[name])
    for label, ptm in (("neuba", bd), ("neuba+recipe", rc), ("neuba scaled by recipe's norm ratios", scaled)):
        for ds, split in (("tiny-imagenet", "validation"), ("catdog", "test")):
            cos = cos_to_target(ptm, ds, split, ctx, cache)
            print(f"{label:38s} {ds:14s} cos to target per trigger: {' '.join(f'{c:.3f}' for c in cos)}")


if __name__ == "__main__":
    import attacks  # noqa: F401

    main()
