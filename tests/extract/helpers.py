"""Small models, checkpoints and probes shared by the extraction tests."""

from __future__ import annotations

import torch

from raymatch.models import build_model, checkpoint_bytes
from raymatch.probes import ProbeSpec, RowSample

DIGITS = {"in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8}


def digits_model(seed: int):
    torch.manual_seed(seed)
    return build_model("small_cnn", **DIGITS)


def put_checkpoint(store, seed: int) -> str:
    key = f"checkpoints/seed{seed}.safetensors"
    store.write_bytes(key, checkpoint_bytes(digits_model(seed)))
    return key


def probe(rows="all", n_examples=96) -> ProbeSpec:
    return ProbeSpec("digits", split="test", n_examples=n_examples, seed=1, rows=rows)


def sampled_probe(rows=400, repeats=3) -> ProbeSpec:
    return probe(rows=RowSample(rows=rows, repeats=repeats, seed=5))
