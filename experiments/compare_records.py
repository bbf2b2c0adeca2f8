"""Compare the records of a scratch results store with the committed ones of the same ids: is a cell recomputed
from an empty artifact cache the same, to the last digit, as the committed cell?

    python experiments/compare_records.py SCRATCH_STORE results/paper/text

Compared: the first and last fine-tuning loss, CACC, AASR, MASR and every per-trigger ASR (wall times and
peak memory are left out: they are measurements of the machine, not of the model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIELDS = ("cacc", "aasr", "masr", "per_trigger")


def compare(scratch: Path, committed: Path) -> list[str]:
    rows = ["| record | same | differs in |", "|---|---|---|"]
    for f in sorted((scratch / "records").glob("*.json")):
        ref = committed / "records" / f.name
        if not ref.is_file():
            rows.append(f"| {f.stem} | – | no committed record of this id |")
            continue
        a, b = json.loads(f.read_text()), json.loads(ref.read_text())
        diff = [k for k in FIELDS if a[k] != b[k]]
        diff += [f"finetune {k}" for k in ("loss_first", "loss_last")
                 if a["finetune_train"][k] != b["finetune_train"][k]]
        rows.append(f"| {f.stem} | {'yes' if not diff else 'no'} | {', '.join(diff) or '–'} |")
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python experiments/compare_records.py SCRATCH_STORE COMMITTED_STORE")
    print("\n".join(compare(Path(sys.argv[1]), Path(sys.argv[2]))))
