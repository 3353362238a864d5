"""Run a probe through one model and stream the chosen layers' activations into the store.

A layer output of shape (N, C, H, W) becomes C neurons over rows (image, y, x); (N, F) becomes F
neurons over N rows; other layouts, tuple/dict outputs and reused modules as
:mod:`raymatch.extract.outputs` says. Under the paper's sampling protocol the (image, position) rows are a function
of the probe and the layer's spatial shape only (:func:`raymatch.probes.sample_rows`), so every model
of a population gets identical rows; they are picked batch by batch inside the forward hook, so
N·H·W rows of a layer are never materialised.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch
from torch import nn

from ..models import load_model
from ..probes import ProbeSpec, RowSample, load_probe, sample_rows
from ..store import ActivationKey, ActivationWriter, Store
from ..store.activations import DEFAULT_FORMAT, DEFAULT_SHARD_ROWS, stored_repeats
from ..store.layout import pooled_layer
from .layers import resolve_layers
from .outputs import LayerOptions, as_neuron_matrix, call_counts, layer_base, neuron_shape, pick_output


@dataclass(frozen=True)
class ExtractionJob:
    """One model of a population: which checkpoint, which architecture, which probe and layers.

    Attributes
    ----------
    checkpoint : str
        A key in the store (``checkpoints/seed0.safetensors``), or a local path / URI of its own.
    arch : str
        Registry name of the architecture (``raymatch.models.available_models()``).
    probe : ProbeSpec
    layers : tuple of (str or dict)
        Layer entries: selectors (names, globs or types) or ``{select, neurons, output}`` mappings.
    arch_kwargs : dict
        Constructor arguments (in_channels, num_classes, width, input_size).
    batch_size : int
    architecture : dict, optional
        The study's whole architecture (:meth:`Architecture.to_dict <raymatch.study.Architecture.to_dict>`):
        a factory or another source is built from it in the worker; None builds ``arch`` from the zoo.
    checkpoint_options : dict, optional
        ``key`` and ``strip_prefix`` of ``population.checkpoint`` (see
        :func:`~raymatch.models.checkpoint.unwrap_state_dict`).
    pooled : tuple of str
        Module names whose global average over positions (one row per example) is also stored, as the layer
        ``<name>+mean`` (:func:`~raymatch.store.layout.pooled_layer`; ``cross_layers.pool: mean``).
    architecture_digest : str, optional
        :attr:`Architecture.digest <raymatch.study.Architecture.digest>`, computed by the driver, folded into the
        model id (so that the worker's id is the plan's even where its copy of the code differs).
    """

    checkpoint: str
    arch: str
    probe: ProbeSpec
    layers: tuple[str, ...] = ("relu",)
    arch_kwargs: dict = field(default_factory=dict)
    batch_size: int = 256
    architecture: dict | None = None
    checkpoint_options: dict | None = None
    pooled: tuple[str, ...] = ()
    architecture_digest: str | None = None


def read_checkpoint(store: Store, checkpoint: str) -> bytes:
    """Checkpoint bytes from the store (a relative key) or from a path / URI of its own."""
    if checkpoint.startswith("/") or "://" in checkpoint:
        try:
            with fsspec.open(checkpoint, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist") from None
    if not store.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} is not in {store.uri}")
    return store.read_bytes(checkpoint)


class _LayerTap:
    """Forward hook that turns one layer's batch outputs into rows for its writers (one per repeat)."""

    def __init__(self, name: str, model_id: str, probe: ProbeSpec, n_images: int, make_writer):
        self.name, self.model_id, self.probe, self.n_images = name, model_id, probe, n_images
        self.make_writer = make_writer
        self.offset = 0  # index of the next image this layer expects
        self.batch_start = 0  # index of the current batch's first image
        self.writers: list[ActivationWriter] = []
        self.rows: list[np.ndarray | None] = []  # sampled flat (image, y, x) indices per repeat
        self.shape: tuple[int, ...] | None = None

    def _start(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        n_neurons = self.shape[0]
        spatial = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        sampled = isinstance(self.probe.rows, RowSample) and spatial > 1
        repeats = self.probe.rows.repeats if sampled else 1
        for repeat in range(repeats):
            if sampled:
                height, width = (self.shape[1], int(np.prod(self.shape[2:]))) if len(self.shape) > 2 else (spatial, 1)
                rows = sample_rows(self.probe, self.n_images, height, width, repeat)
                self.rows.append(rows)
                policy = {"rows": self.probe.rows.rows, "repeats": repeats, "seed": self.probe.rows.seed,
                          "rows_sha256": hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest()}
            else:
                self.rows.append(None)
                policy = "all"
            meta = {"layer_shape": list(self.shape), "row_policy": policy, "n_images": self.n_images}
            self.writers.append(self.make_writer(self.name, repeat, n_neurons, meta))

    def __call__(self, flat: torch.Tensor, shape: tuple[int, ...], output: torch.Tensor) -> None:
        """Take one batch: ``flat`` (B, C, positions) of ``output``, whose neuron shape is ``shape``."""
        if self.offset != self.batch_start:
            raise ValueError(f"layer {self.name} runs more often in this forward pass than in the first one")
        if self.shape is None:
            self._start(shape)
        batch = flat.shape[0]
        positions = flat.shape[2]
        for writer, rows in zip(self.writers, self.rows, strict=True):
            if rows is None:
                # (C, B·positions), columns ordered (image, position); a copy, so a later in-place op
                # on `output` (an in-place ReLU after a conv) cannot change what was captured.
                block = flat.permute(1, 0, 2).reshape(self.shape[0], -1)
                if block.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                    block = block.clone()  # the reshape was a view (a single image, or one position)
                block = block.to("cpu", torch.float32)
            else:
                lo, hi = np.searchsorted(rows, [self.offset * positions, (self.offset + batch) * positions])
                local = torch.from_numpy(rows[lo:hi] - self.offset * positions).to(flat.device)
                block = flat[local // positions, :, local % positions].T.to("cpu", torch.float32, copy=True)
            if not torch.isfinite(block.sum()):  # NaN / Inf anywhere make the sum non-finite
                bad = int((~torch.isfinite(block)).sum())
                raise ValueError(f"activations of model {self.model_id}, layer {self.name} have {bad} "
                                 "non-finite values (NaN or Inf)")
            writer.append(block.numpy().T)  # (rows, C), column-major: taken without another copy
        self.offset += batch


class _ModuleTap:
    """Forward hook of one module: its k-th call in a forward pass goes to the tap of layer ``name#k``."""

    def __init__(self, taps: dict[int | None, _LayerTap], options: dict[int | None, LayerOptions]):
        self.taps, self.options = taps, options
        self.call = 0  # calls so far in the current forward pass

    def __call__(self, module: nn.Module, inputs, output) -> None:
        index = None if None in self.taps else self.call
        self.call += 1
        tap = self.taps.get(index)
        if tap is None:  # a call of a reused module that no layer selects
            return
        options = self.options[index]
        picked = pick_output(output, options.output, tap.name)
        tap(as_neuron_matrix(picked, LayerOptions(options.neurons), tap.name).detach(),
            neuron_shape(picked.shape, options.neurons, tap.name), picked)


class _MeanTap:
    """Forward hook that stores one layer's global average over positions: one row per image, (N, C)."""

    def __init__(self, name: str, make_writer):
        self.name, self.make_writer = name, make_writer
        self.writer: ActivationWriter | None = None

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        batch = output.shape[0]
        flat = output.detach().reshape(batch, output.shape[1], -1)  # (B, C, positions)
        if self.writer is None:
            meta = {"layer_shape": list(output.shape[1:]), "row_policy": "all", "pooled_from": self.name,
                    "pool": "mean"}
            self.writer = self.make_writer(pooled_layer(self.name), 0, flat.shape[1], meta)
        block = flat.double().mean(dim=2).to("cpu", torch.float32)  # (B, C)
        if not torch.isfinite(block.sum()):
            raise ValueError(f"pooled activations of layer {self.name} have non-finite values (NaN or Inf)")
        self.writer.append(block.numpy())


def extract_model(store: Store, model: nn.Module, model_id: str, images: torch.Tensor, probe: ProbeSpec,
                  layers, *, batch_size: int = 256, device: str | torch.device = "cpu",
                  shard_rows: int = DEFAULT_SHARD_ROWS, fmt: str = DEFAULT_FORMAT,
                  pooled: Sequence[str] = ()) -> dict[str, dict]:
    """Run ``images`` (N, C, H, W) through ``model`` and store the activations of ``layers``.

    ``layers`` are layer names (``relu#1`` for the second call of a reused module ``relu``), or a mapping of
    layer names to :class:`~raymatch.extract.outputs.LayerOptions`. The modules named in ``pooled`` also get their
    global average over positions stored, one row per image, as the layer ``<name>+mean``
    (:func:`~raymatch.store.layout.pooled_layer`).

    Every (layer, repeat) becomes visible only when complete (its manifest is written last); on any
    error the parts written so far are removed.

    Returns
    -------
    dict
        For each layer, its output shape and the manifests of its repeats.
    """
    modules = dict(model.named_modules())
    made: list[ActivationWriter] = []
    io_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymatch-write")  # IO overlaps compute

    def make_writer(name, repeat, n_neurons, meta):
        key = ActivationKey(probe.id, model_id, name, repeat)
        writer = ActivationWriter(store, key, n_neurons, metadata=meta, shard_rows=shard_rows, fmt=fmt,
                                  executor=io_thread)
        made.append(writer)
        return writer

    options = dict(layers) if isinstance(layers, Mapping) else {name: LayerOptions() for name in layers}
    taps = {name: _LayerTap(name, model_id, probe, images.shape[0], make_writer) for name in options}
    by_module: dict[str, _ModuleTap] = {}
    for name, tap in taps.items():
        base, index = layer_base(name) if name not in modules else (name, None)
        module_tap = by_module.setdefault(base, _ModuleTap({}, {}))
        module_tap.taps[index], module_tap.options[index] = tap, options[name]
    handles = [modules[base].register_forward_hook(module_tap) for base, module_tap in by_module.items()]
    means = {name: _MeanTap(name, make_writer) for name in pooled}
    handles += [modules[name].register_forward_hook(tap) for name, tap in means.items()]
    model = model.to(device).eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                for tap in taps.values():
                    tap.batch_start = start
                for module_tap in by_module.values():
                    module_tap.call = 0
                model(images[start : start + batch_size].to(device))
        summary = {}
        for name, tap in taps.items():
            manifests = [writer.close() for writer in tap.writers]
            summary[name] = {"shape": list(tap.shape or ()), "repeats": len(manifests),
                             "rows": [m["shape"][0] for m in manifests]}
        for name, tap in means.items():
            manifest = tap.writer.close()
            summary[pooled_layer(name)] = {"shape": manifest["shape"][1:], "repeats": 1, "rows": [manifest["shape"][0]]}
        for writer in made:
            writer.result()
        return summary
    except BaseException:
        for writer in made:
            writer.abort()
        raise
    finally:
        for handle in handles:
            handle.remove()
        io_thread.shutdown(wait=True)


def run_job(store: Store, job: ExtractionJob, *, device: str | torch.device = "cpu",
            images: torch.Tensor | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
            fmt: str = DEFAULT_FORMAT) -> dict:
    """Extract one model's activations unless already stored; returns a summary row."""
    started = time.perf_counter()
    data = read_checkpoint(store, job.checkpoint)
    model, model_id = load_model(job.arch, data, name=job.checkpoint, architecture=job.architecture,
                                 checkpoint_options=job.checkpoint_options,
                                 architecture_digest=job.architecture_digest, **job.arch_kwargs)
    if images is None:
        images = load_probe(job.probe)
    options = resolve_layers(model, job.layers, calls=call_counts(model.eval(), images[:1]))
    layers = list(options)
    todo = [layer for layer in layers if stored_repeats(store, job.probe.id, model_id, layer) is None]
    pooled = [layer for layer in job.pooled
              if stored_repeats(store, job.probe.id, model_id, pooled_layer(layer)) is None]
    summary = {"checkpoint": job.checkpoint, "model_id": model_id, "probe_id": job.probe.id,
               "layers": layers, "computed": todo + [pooled_layer(layer) for layer in pooled],
               "skipped": [layer for layer in layers if layer not in todo]}
    if todo or pooled:
        summary["outputs"] = extract_model(store, model, model_id, images, job.probe,
                                           {layer: options[layer] for layer in todo},
                                           batch_size=job.batch_size, device=device, shard_rows=shard_rows,
                                           fmt=fmt, pooled=pooled)
    summary["seconds"] = time.perf_counter() - started
    return summary
