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


def _tiny_bert_dir(tmp_path: Path, name: str) -> Path:
    from conftest import wordpiece_tokenizer

    d = tmp_path / name
    d.mkdir()
    BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).to_json_file(str(d / "config.json"))
    wordpiece_tokenizer().save_pretrained(str(d))
    return d


def test_opted_in_pickle_goes_through_weights_only(env, tmp_path):
    import torch
    from transformers import BertModel

    good = _tiny_bert_dir(tmp_path, "good")
    model = BertModel(BertConfig.from_json_file(str(good / "config.json")))
    torch.save(model.state_dict(), good / "pytorch_model.bin")
    evil = _tiny_bert_dir(tmp_path, "evil")
    marker = tmp_path / "PWNED"
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    code = ("import sys; from bench.modalities.text import ADAPTER; p = ADAPTER.from_pretrained(sys.argv[1]); "
            "print(type(p.backbone).__name__, p.backbone.pooler is not None)")
    env = {**env, "PTMBENCH_ALLOW_PICKLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run([sys.executable, "-c", code, str(good)], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "BertModel True" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "bench.cli", "--allow-pickle", "finetune", "--model", str(evil),
                          "--dataset", "sst2", "--preset", "smoke", "--results", str(tmp_path / "res")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "weights_only" in bad.stderr, bad.stderr[-2000:]
    assert not marker.exists()
