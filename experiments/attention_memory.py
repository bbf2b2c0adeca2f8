"""Memory and time of one training-mode forward + backward of a minilm-l6-shaped BERT (6 layers, hidden 384,
12 heads, random weights) under bf16 autocast, for torch SDPA with and without attention dropout and for eager
attention: why BadPre's 512-token batches need micro-batches of 4.  RSS sampled every 10 ms in a thread.

    OMP_NUM_THREADS=1 python experiments/attention_memory.py > results/perf/profile/attention-memory.md
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time


def one(impl: str, dropout: float, batch: int, length: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(attn_implementation=impl, vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536, attention_probs_dropout_prob=dropout,
                     max_position_embeddings=512)
    model = BertModel(cfg)
    model.train()
    ids = torch.randint(1000, 2000, (batch, length))

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**30

    base, peak, stop = rss(), [0.0], [False]

    def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    out.float().pow(2).mean().backward()
    wall = time.perf_counter() - t0
    stop[0] = True
    t.join()
    print(f"| {impl} | {dropout} | {batch} x {length} | {peak[0] - base:.2f} | {wall:.1f} |")


def main() -> None:
    print("| attention | attention dropout | batch | GiB above baseline | s |")
    print("|---|---:|---|---:|---:|")
    for args in (("sdpa", 0.1, 8, 512), ("sdpa", 0.0, 8, 512), ("eager", 0.1, 8, 512), ("sdpa", 0.1, 4, 512),
                 ("sdpa", 0.1, 32, 128), ("sdpa", 0.1, 160, 128)):
        # a fresh process per case, so one case's freed memory never hides the next one's peak
        subprocess.run([sys.executable, __file__, *map(str, args)], check=True)
        sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) == 5:
        one(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
