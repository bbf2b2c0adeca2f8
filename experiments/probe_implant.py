"""Short implant probes used to pick the scaled `demo` presets (results quoted in attacks/por.py and
attacks/neuba_vision.py).  Each line: the attack's loss parts at the first and last tenth of the steps.

    PTMBENCH_CACHE=... HF_HUB_OFFLINE=1 python experiments/probe_implant.py por1 2e-4 60
    PTMBENCH_CACHE=... HF_HUB_OFFLINE=1 python experiments/probe_implant.py por1 6e-4 60
    ... probe_implant.py neuba-vision 0.01 80 sgd none
    ... probe_implant.py neuba-vision 0.05 80 sgd none
    ... probe_implant.py neuba-vision 3e-4 80 adamw 1
    ... probe_implant.py neuba-vision 1e-3 80 adamw 1
"""

from __future__ import annotations

import sys
import time

from bench.artifacts import ArtifactStore, default_cache_dir
from bench.context import RunContext
from bench.registry import get
from bench.zoo import Zoo


def main() -> None:
    name, lr, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    overrides: dict = {"lr": lr, "steps": steps}
    if name.startswith("por"):
        overrides["max_corpus_sequences"] = 24 * steps
    if len(sys.argv) > 4:
        overrides["optimizer"] = sys.argv[4]
        overrides["clip"] = None if sys.argv[5] == "none" else float(sys.argv[5])
    attack = get("attack", name).build("demo", overrides)
    cache = default_cache_dir()
    ctx = RunContext(seed=0)
    model = "vit-tiny-tin32" if name == "neuba-vision" else "minilm-l6-mlm"
    ptm, _ = Zoo(ArtifactStore(cache / "artifacts"), cache).load(model, ctx)
    t = time.time()
    out = attack.implant(ptm, ctx, cache)
    print(name, overrides, out.info["attack"]["train"], f"{time.time() - t:.0f}s")


if __name__ == "__main__":
    import attacks  # noqa: F401  (registers the attacks)

    main()
