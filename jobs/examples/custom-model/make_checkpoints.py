"""Train a few seeds of ``mynets`` briefly on scikit-learn's digits and save them as DDP training scripts do.

Each file is ``torch.save({"state_dict": {"module.<name>": tensor, ...}, "epoch": n}, path)``: the state dict of a
``DistributedDataParallel``-wrapped model, nested under ``state_dict`` beside the epoch. The study reads them with
``population.checkpoint: {key: state_dict, strip_prefix: "module."}``.

Usage: ``python jobs/examples/custom-model/make_checkpoints.py DIR [--seeds 0 1 2] [--steps 30]``
(from the repository root; writes ``DIR/seed<k>.pt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the example's own package, as a user's script has it

from mynets import make_net


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (1797, 1, 8, 8) float32 images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    return images, torch.from_numpy(data.target.astype(np.int64))


def save_checkpoints(out_dir: str | Path, seeds=(0, 1, 2), steps: int = 30, **net_kwargs) -> list[Path]:
    """Train one net per seed for ``steps`` SGD steps (batches of 64) and save each DDP-style.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing.
    seeds : sequence of int
    steps : int
    **net_kwargs
        Passed to ``make_net``.

    Returns
    -------
    list of Path
        ``out_dir/seed<k>.pt``, in seed order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digits()
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = make_net(**net_kwargs)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, len(images), (64,), generator=generator)
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
        state = {f"module.{name}": tensor.detach().clone() for name, tensor in model.state_dict().items()}
        path = out / f"seed{seed}.pt"
        torch.save({"state_dict": state, "epoch": steps}, path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    """Command line: ``make_checkpoints.py DIR [--seeds …] [--steps N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    for path in save_checkpoints(args.out_dir, args.seeds, args.steps):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
