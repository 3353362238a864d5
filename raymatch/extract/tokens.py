"""Token rows: run a language model over a text probe and store one row per real token of the chosen layers.

The probe's sequences are run longest first in length-bucketed batches, padded on the tokenizer's side with an
attention mask and explicit position ids (so a left-padded sequence has the positions it has alone). A layer is a
module whose output is ``(batch, tokens, neurons)`` — module paths with wildcards, as for any model:
``transformer.h.*.mlp.act`` (GPT-2's post-GELU MLP neurons), ``gpt_neox.layers.*.mlp.act`` (Pythia),
``bert.encoder.layer.*.intermediate`` (BERT) — or ``hidden_states.k``, the residual stream the model returns with
``output_hidden_states`` (``k = 0`` the embeddings, ``k = i`` after block ``i``; the selector ``hidden_states`` is one
layer per block, ``hidden_states.1 … hidden_states.L``; transformers applies the final layer norm to the last one).

Only the probe's rows are kept (:mod:`raymatch.probes.token_rows`): padding never, special tokens only with
``tokens.special``, one row per sequence with ``tokens.pool``. They are stored as float32 whatever dtype the model
runs in; each manifest records that dtype (``model_dtype``), and the (sequence, position, token) of every row is
stored once per probe and repeat (:func:`raymatch.store.token_rows.read_token_rows`).
"""

from __future__ import annotations

import fnmatch
import inspect
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models import LMModel, load_lm, resolve_model
from ..probes.text import TextProbe
from ..probes.token_rows import batch_ranges
from ..probes.tokenizer import has_tokenizer, load_tokenizer, tokenizer_fingerprint
from ..store import ActivationKey, ActivationWriter, Store
from ..store.activations import DEFAULT_FORMAT, DEFAULT_SHARD_ROWS, stored_repeats
from ..store.token_rows import rows_sha256, token_rows_table, write_token_rows
from .layers import resolve_layers
from .outputs import LayerOptions, entry_parts, pick_output

__all__ = ["HIDDEN_STATES", "TokenBatch", "TokenExtractionJob", "extract_tokens", "forward_kwargs", "iter_batches",
           "run_token_job", "token_exact_tolerance", "token_layers"]

#: The selector of the residual stream (``output_hidden_states``): ``hidden_states`` or ``hidden_states.<k>``.
HIDDEN_STATES = "hidden_states"
#: Sequences per batch and padded tokens per batch by default.
DEFAULT_BATCH_SIZE = 64
DEFAULT_BATCH_TOKENS = 16_384


def _hidden_count(model: nn.Module) -> int:
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise ValueError(f"{type(model).__name__} has no config.num_hidden_layers: it has no hidden_states layers")
    return layers + 1


def token_layers(model: nn.Module, entries, *, field: str = "layers") -> dict[str, LayerOptions]:
    """The layers that layer entries choose: modules in network order, then ``hidden_states.k`` in order.

    Parameters
    ----------
    model : torch.nn.Module
        A ``transformers`` model (``hidden_states`` needs its ``config.num_hidden_layers``).
    entries : str or sequence of (str or mapping)
        Selectors (:func:`~raymatch.extract.layers.resolve_layers`) or ``hidden_states``, ``hidden_states.3``,
        ``hidden_states.*``.
    field : str
        Name used in error messages.

    Returns
    -------
    dict of str to LayerOptions

    Raises
    ------
    ValueError
        A selector that matches no module (listing them) or no hidden state (naming the range).
    """
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    modules: dict[str, LayerOptions] = {}
    hidden: set[str] = set()
    for i, entry in enumerate(entries):
        selector, _ = entry_parts(entry)
        if isinstance(selector, str) and selector.split(".", 1)[0] == HIDDEN_STATES:
            names = [f"{HIDDEN_STATES}.{k}" for k in range(_hidden_count(model))]
            found = names[1:] if selector == HIDDEN_STATES else fnmatch.filter(names, selector)
            if not found:
                raise ValueError(f"{field}[{i}]: {selector!r} matches no hidden state of this model "
                                 f"({names[0]} … {names[-1]}, or {HIDDEN_STATES} for one per block)")
            hidden.update(found)
            continue
        try:
            found = resolve_layers(model, [entry], field=field)
        except ValueError as error:
            raise ValueError(str(error).replace(f"{field}[0]:", f"{field}[{i}]:", 1)) from None
        for name, options in found.items():
            if modules.setdefault(name, options) != options:
                raise ValueError(f"{field}[{i}]: {selector!r} selects {name}, which an earlier entry selects with "
                                 "another output option")
    order = list(resolve_layers(model, list(modules))) if modules else []
    return {**{name: modules[name] for name in order},
            **{name: LayerOptions() for name in sorted(hidden, key=lambda name: int(name.rsplit(".", 1)[1]))}}


@dataclass(frozen=True)
class TokenBatch:
    """One padded batch: ranks ``start:stop`` of the probe's processing order.

    Attributes
    ----------
    start, stop : int
    input_ids, attention_mask, position_ids : torch.Tensor, int64, shape (B, T)
    offsets : numpy.ndarray, int64, shape (B,)
        Where each sequence starts in the padded batch (0 with right padding).
    """

    start: int
    stop: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: np.ndarray


def iter_batches(probe: TextProbe, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS) -> Iterator[TokenBatch]:
    """The probe's length-bucketed batches, padded on its tokenizer's side (:func:`~.token_rows.batch_ranges`)."""
    lengths = probe.lengths
    for start, stop in batch_ranges(lengths, batch_size, max_batch_tokens):
        members = probe.order[start:stop]
        width = int(lengths[members].max())
        ids = torch.full((len(members), width), probe.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(members), width), dtype=torch.long)
        offsets = np.zeros(len(members), dtype=np.int64)
        for b, sequence in enumerate(members):
            n = int(lengths[sequence])
            offsets[b] = width - n if probe.padding_side == "left" else 0
            ids[b, offsets[b] : offsets[b] + n] = torch.tensor(probe.input_ids[sequence])  # a copy: read-only via Ray
            mask[b, offsets[b] : offsets[b] + n] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        yield TokenBatch(start, stop, ids, mask, positions, offsets)


def forward_kwargs(model: nn.Module, batch: TokenBatch, *, hidden_states: bool = False,
                   device: str | torch.device = "cpu") -> dict:
    """The keyword arguments of one batch's forward pass (what the model's ``forward`` accepts of them).

    ``position_ids`` makes a left-padded sequence's positions its own; ``use_cache=False`` keeps no key/value cache;
    ``logits_to_keep=1`` spares a causal LM the logits of every position (no layer here needs them).
    """
    accepted = inspect.signature(model.forward).parameters
    kwargs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
    if "position_ids" in accepted:
        kwargs["position_ids"] = batch.position_ids.to(device)
    for name, value in (("use_cache", False), ("logits_to_keep", 1), ("return_dict", True)):
        if name in accepted:
            kwargs[name] = value
    if hidden_states:
        kwargs["output_hidden_states"] = True
    return kwargs


class _Rows:
    """Where one repeat's rows are in each batch: (b, t) indices, or (b, weights) for mean pooling."""

    def __init__(self, probe: TextProbe, repeat: int):
        self.probe, self.rows = probe, probe.rows(repeat)
        rank = np.empty(len(probe.order), dtype=np.int64)
        rank[probe.order] = np.arange(len(probe.order))
        self.rank = rank[self.rows[:, 0]] if len(self.rows) else np.zeros(0, np.int64)  # sorted ascending

    def at(self, batch: TokenBatch, device) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = np.searchsorted(self.rank, [batch.start, batch.stop])
        b = self.rank[lo:hi] - batch.start
        if self.probe.tokens.pool == "mean":
            weights = torch.zeros((hi - lo, batch.input_ids.shape[1]), dtype=torch.float64)
            for i, (member, sequence) in enumerate(zip(b, self.rows[lo:hi, 0], strict=True)):
                eligible = np.ones(len(self.probe.special[sequence]), bool) if self.probe.tokens.special else \
                    ~self.probe.special[sequence]
                where = np.flatnonzero(eligible) + batch.offsets[member]
                weights[i, where] = 1.0 / len(where)
            return torch.from_numpy(b).to(device), weights.to(device)
        t = self.rows[lo:hi, 1] + batch.offsets[b]
        return torch.from_numpy(b).to(device), torch.from_numpy(t).to(device)

    def table(self):
        tokens = [self.probe.pieces[s][p] if p >= 0 else "" for s, p in self.rows]
        ids = [int(self.probe.input_ids[s][p]) if p >= 0 else -1 for s, p in self.rows]
        return token_rows_table(self.rows, np.asarray(ids, dtype=np.int64), tokens)


class _TokenTap:
    """One layer: its batch outputs (B, T, D) gathered to rows, one writer per repeat."""

    def __init__(self, name: str, options: LayerOptions, model_id: str, make_writer):
        self.name, self.options, self.model_id, self.make_writer = name, options, model_id, make_writer
        self.writers: list[ActivationWriter] = []
        self.places: list[tuple[torch.Tensor, torch.Tensor]] = []  # this batch's rows, per repeat
        self.mean = False

    def take(self, output) -> None:
        tensor = pick_output(output, self.options.output, self.name).detach()
        if tensor.dim() != 3:
            raise ValueError(f"layer {self.name} outputs shape {tuple(tensor.shape)}: a token layer needs "
                             "(batch, tokens, neurons)")
        if not self.writers:
            self.writers = [self.make_writer(self.name, repeat, tensor.shape[2]) for repeat in range(len(self.places))]
        for writer, (b, where) in zip(self.writers, self.places, strict=True):
            if self.mean:
                block = torch.bmm(where.unsqueeze(1), tensor[b].double()).squeeze(1)
            else:
                block = tensor[b, where]
            block = block.to("cpu", torch.float32)  # indexing and bmm made a new tensor: no view of `output`
            if not torch.isfinite(block.sum()):
                bad = int((~torch.isfinite(block)).sum())
                raise ValueError(f"activations of model {self.model_id}, layer {self.name} have {bad} non-finite "
                                 "values (NaN or Inf)")
            writer.append(block.numpy())

    def __call__(self, module: nn.Module, inputs, output) -> None:
        self.take(output)


def token_exact_tolerance(model_dtype: str) -> float:
    """The exact (ε = 0) tolerance of activations a model computed in ``model_dtype`` (a manifest's ``model_dtype``).

    :func:`raymatch.match.exact_tolerance` of that torch dtype (``bfloat16`` and ``float16`` count as float32, the
    dtype the activations are stored in).
    """
    from ..match import exact_tolerance

    dtype = getattr(torch, model_dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"model_dtype: not a torch floating dtype: {model_dtype!r}")
    return exact_tolerance(dtype)


def _dtype_name(model: nn.Module) -> str:
    parameter = next(model.parameters(), None)
    return str(parameter.dtype).removeprefix("torch.") if parameter is not None else "float32"


def extract_tokens(store: Store, model: nn.Module, model_id: str, probe: TextProbe, layers, *,
                   model_dtype: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS, device: str | torch.device = "cpu",
                   shard_rows: int = DEFAULT_SHARD_ROWS, fmt: str = DEFAULT_FORMAT) -> dict[str, dict]:
    """Run ``probe`` through ``model`` and store the token rows of ``layers``, float32.

    Parameters
    ----------
    store : Store
    model : torch.nn.Module
        A ``transformers`` model (any dtype, on any device).
    model_id : str
    probe : TextProbe
    layers : sequence of str or mapping of str to LayerOptions
        Layer names (:func:`token_layers`).
    model_dtype : str, optional
        Recorded in every manifest as ``model_dtype`` (default: the dtype of the model's parameters).
    batch_size, max_batch_tokens : int
        Sequences and padded tokens per batch at most.
    device : str or torch.device
    shard_rows : int
    fmt : {'arrow', 'parquet'}

    Returns
    -------
    dict
        For each layer, ``shape`` (neurons), ``repeats`` and ``rows`` per repeat.

    Notes
    -----
    Every (layer, repeat) becomes visible only when complete (its manifest is written last, after the probe's
    token-rows tables); on any error what was written of the matrices is removed.
    """
    options = dict(layers) if isinstance(layers, Mapping) else {name: LayerOptions() for name in layers}
    model_dtype = model_dtype or _dtype_name(model)
    repeats = [_Rows(probe, repeat) for repeat in range(probe.tokens.repeats)]
    row_keys = [write_token_rows(store, probe.id, repeat, rows.table()) for repeat, rows in enumerate(repeats)]
    digests = [rows_sha256(rows.rows) for rows in repeats]
    made: list[ActivationWriter] = []
    io_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymatch-write")

    def make_writer(name: str, repeat: int, n_neurons: int) -> ActivationWriter:
        sample = probe.tokens.rows
        policy = "all" if sample is None else {**sample.to_dict(), "rows_sha256": digests[repeat]}
        meta = {"layer_shape": [int(n_neurons)], "row_policy": policy, "rows_sha256": digests[repeat],
                "n_texts": len(probe.texts), "model_dtype": model_dtype, "tokens": probe.tokens.to_dict(),
                "token_rows": row_keys[repeat]}
        writer = ActivationWriter(store, ActivationKey(probe.id, model_id, name, repeat), int(n_neurons),
                                  metadata=meta, shard_rows=shard_rows, fmt=fmt, executor=io_thread)
        made.append(writer)
        return writer

    taps = {name: _TokenTap(name, option, model_id, make_writer) for name, option in options.items()}
    modules = dict(model.named_modules())
    hidden = {name: int(name.rsplit(".", 1)[1]) for name in taps if name.split(".", 1)[0] == HIDDEN_STATES
              and name not in modules}
    handles = [modules[name].register_forward_hook(tap) for name, tap in taps.items() if name not in hidden]
    model = model.to(device).eval()
    try:
        with torch.no_grad():
            for batch in iter_batches(probe, batch_size, max_batch_tokens):
                places = [rows.at(batch, device) for rows in repeats]
                for tap in taps.values():
                    tap.places, tap.mean = places, probe.tokens.pool == "mean"
                outputs = model(**forward_kwargs(model, batch, hidden_states=bool(hidden), device=device))
                for name, index in hidden.items():
                    taps[name].take(outputs.hidden_states[index])
        summary = {}
        for name, tap in taps.items():
            manifests = [writer.close() for writer in tap.writers]
            summary[name] = {"shape": manifests[0]["shape"][1:] if manifests else [], "repeats": len(manifests),
                             "rows": [manifest["shape"][0] for manifest in manifests]}
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


@dataclass(frozen=True)
class TokenExtractionJob:
    """One language model of a population, with the probe and layers it is extracted on.

    Attributes
    ----------
    model : LMModel
    probe : TextProbe
    layers : tuple of (str or dict)
        Layer entries (:func:`token_layers`).
    cls, dtype : str
        ``architecture.class`` and ``architecture.torch_dtype``.
    batch_size, max_batch_tokens : int
    cache_dir : str, optional
        The Hub cache (default: the worker's :func:`~raymatch.models.transformers_source.hub_cache_dir`).
    """

    model: LMModel
    probe: TextProbe
    layers: tuple = (HIDDEN_STATES,)
    cls: str = "AutoModel"
    dtype: str = "float32"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS
    cache_dir: str | None = None


def run_token_job(store: Store, job: TokenExtractionJob, *, device: str | torch.device = "cpu",
                  shard_rows: int = DEFAULT_SHARD_ROWS, fmt: str = DEFAULT_FORMAT) -> dict:
    """Extract one model's token rows unless already stored; returns a summary row.

    Raises
    ------
    ValueError
        The model's own tokenizer (when its folder has one) is not the probe's: its rows would be other tokens.
    """
    started = time.perf_counter()
    resolved = resolve_model(job.model, cache_dir=job.cache_dir)
    model, model_id = load_lm(resolved, job.cls, job.dtype)
    if has_tokenizer(resolved.path):
        fingerprint = tokenizer_fingerprint(load_tokenizer(resolved.path, label=job.model.label))
        if fingerprint != job.probe.fingerprint:
            raise ValueError(f"model {job.model.label}: its tokenizer is not the probe's (vocabulary, merges or "
                             "special tokens differ)")
    options = token_layers(model, job.layers)
    todo = [name for name in options if stored_repeats(store, job.probe.id, model_id, name) is None]
    summary = {"model": job.model.label, "model_id": model_id, "probe_id": job.probe.id, "layers": list(options),
               "computed": todo, "skipped": [name for name in options if name not in todo],
               "tokens": int(job.probe.lengths.sum())}
    if todo:
        summary["outputs"] = extract_tokens(store, model, model_id, job.probe, {name: options[name] for name in todo},
                                            model_dtype=job.dtype, batch_size=job.batch_size,
                                            max_batch_tokens=job.max_batch_tokens, device=device,
                                            shard_rows=shard_rows, fmt=fmt)
    summary["seconds"] = time.perf_counter() - started
    return summary

