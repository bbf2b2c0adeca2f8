"""Untrusted checkpoints: a pickle-based checkpoint is refused before anything in it can run."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from transformers import BertConfig


class _Payload:
    """Unpickling this object would create a file (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_refused_and_never_unpickled(env, tmp_path):
    model = tmp_path / "evil-model"
    model.mkdir()
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).to_json_file(str(model / "config.json"))
    marker = tmp_path / "PWNED"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    out = subprocess.run([sys.executable, "-m", "bench.cli", "finetune", "--model", str(model), "--dataset", "sst2",
                          "--preset", "smoke", "--results", str(tmp_path / "res")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "pickle" in out.stderr and "refused" in out.stderr
    assert not marker.exists()
    assert not (tmp_path / "res").exists()
