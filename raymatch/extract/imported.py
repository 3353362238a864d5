"""Activations computed elsewhere, brought into the store as if raymatch had extracted them.

Two layouts (``population.activations`` of a study):

- ``authors-npz``: ``<dir>/rnd_<seed>/<prefix>.npz`` per seed, one array per layer (the authors' code saves
  ``features.*`` as (N, C, H, W) and ``classifier.*`` as (N, F)); the models are named ``seed<k>``.
- ``npy``: one ``.npy`` file per (model, layer), found with a path template holding ``{model}`` and ``{layer}``
  (``acts/{model}/{layer}.npy``); the models are named as listed.

Every model must have the same layers, every array the same number of examples N, and each layer the same
shape apart from its neurons (axis 1) in every model. A model's id is the digest of its arrays (names, shapes,
dtypes and bytes), so the same arrays anywhere are the same model. The matrices are written through the
extractor's own code (:func:`~raymatch.extract.extractor.extract_model`: a module that replays the arrays), so
rows, row sampling (``probe.rows``), manifests and the NaN/Inf check are those of extracted activations.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..store import Store
from ..store.store import check_name

__all__ = ["ImportError_", "ImportJob", "ImportScan", "import_model", "imported_model_ids", "scan_import",
           "select_imported"]

_ID_HEX_CHARS = 16
_FIELD = "population.activations"


class ImportError_(ValueError):
    """Imported activations that cannot be used: one line naming the field or file."""


@dataclass(frozen=True)
class ImportJob:
    """One imported model whose layers are not all stored: the extract stage of an importing study.

    Attributes
    ----------
    model : str
        Its name in the import (``seed<k>``, or as listed).
    model_id : str
        The digest of its arrays (:func:`imported_model_ids`).
    layers : tuple of str
        The layers to write.
    """

    model: str
    model_id: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ImportScan:
    """What the files hold, read from their headers only.

    Attributes
    ----------
    models : tuple of str
        Model names in population order (``seed<k>``, or the listed names).
    layers : tuple of str
        Layer names in the order of the first model's file (``authors-npz``) or in natural order (``npy``).
    shapes : dict
        ``{model: {layer: shape}}``, shapes with the example axis first.
    sources : dict
        ``{model: {layer: (file, npz key or None)}}``.
    """

    models: tuple[str, ...]
    layers: tuple[str, ...]
    shapes: dict[str, dict[str, tuple[int, ...]]]
    sources: dict[str, dict[str, tuple[str, str | None]]]

    @property
    def n_examples(self) -> int:
        """The examples N every array holds."""
        return next(iter(self.shapes[self.models[0]].values()))[0]


# ------------------------------------------------------------------------------------------------ scanning


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of a ``.npz`` file's arrays, in file order, without reading the data."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(handle)
                headers[info.filename[:-4]] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ImportError_(f"{_FIELD}: cannot read {path}: {error}") from None
    return headers


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ImportError_(f"{_FIELD}: cannot read {path}: {error}") from None
    return tuple(array.shape), array.dtype


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _authors_sources(spec: Any) -> dict[str, dict[str, tuple[str, str | None, tuple, np.dtype]]]:
    found = {}
    for seed in spec.seeds:
        path = Path(spec.dir) / f"rnd_{seed}" / f"{spec.prefix}.npz"
        if not path.is_file():
            raise ImportError_(f"{_FIELD}.seeds: no file {path} for seed {seed}")
        found[f"seed{seed}"] = {key: (str(path), key, shape, dtype) for key, (shape, dtype) in
                                _npz_headers(path).items()}
    return found


def _npy_sources(spec: Any) -> dict[str, dict[str, tuple[str, str | None, tuple, np.dtype]]]:
    found = {}
    for model in spec.models:
        template = spec.path.replace("{model}", model)
        before, after = template.split("{layer}", 1)
        pattern = re.compile(re.escape(before) + r"(.+)" + re.escape(after) + r"\Z")
        layers = {}
        for file in sorted(glob.glob(glob.escape(before) + "*" + glob.escape(after))):
            match = pattern.match(file)
            if match and "/" not in match.group(1):
                layers[match.group(1)] = (file, None, *_npy_header(Path(file)))
        if not layers:
            raise ImportError_(f"{_FIELD}.path: no file matches {template!r} for model {model!r}")
        found[model] = {layer: layers[layer] for layer in sorted(layers, key=_natural)}
    return found


def _signature(spec: Any) -> tuple:
    """The files of the import with their sizes and modification times (what the cached reads depend on)."""
    sources = _authors_sources(spec) if spec.layout == "authors-npz" else _npy_sources(spec)
    files = sorted({file for layers in sources.values() for file, *_ in layers.values()})
    return tuple((file, Path(file).stat().st_size, Path(file).stat().st_mtime_ns) for file in files)


def scan_import(spec: Any) -> ImportScan:
    """Read the headers of an import's files and check that its models agree.

    Parameters
    ----------
    spec : raymatch.extract.import_spec.ActivationImport

    Returns
    -------
    ImportScan

    Raises
    ------
    ImportError_
        A missing or unreadable file, a layer name that cannot be a store key, an array of rank below 2 or of
        another dtype than numbers, models with different layer sets, row counts or layer shapes.
    """
    return _scan(*_spec_key(spec), _signature(spec))


def _spec_key(spec: Any) -> tuple:
    return spec.layout, spec.dir, spec.prefix, tuple(spec.seeds), spec.path, tuple(spec.models)


@functools.lru_cache(maxsize=16)
def _scan(layout, dir_, prefix, seeds, path, models, signature) -> ImportScan:
    from types import SimpleNamespace

    spec = SimpleNamespace(layout=layout, dir=dir_, prefix=prefix, seeds=seeds, path=path, models=models)
    sources = _authors_sources(spec) if layout == "authors-npz" else _npy_sources(spec)
    names = list(sources)
    first = sources[names[0]]
    for model in names:
        for layer, (file, key, shape, dtype) in sources[model].items():
            where = f"{file}[{key}]" if key else file
            try:
                check_name(layer, "layer name")
            except ValueError as error:
                raise ImportError_(f"{_FIELD}: {where}: {error}") from None
            if len(shape) < 2:
                raise ImportError_(f"{_FIELD}: {where} has shape {shape}; a layer needs (N, neurons) or "
                                   "(N, channels, positions…)")
            if dtype.kind not in "biuf":
                raise ImportError_(f"{_FIELD}: {where} holds {dtype} values, not numbers")
        if set(sources[model]) != set(first):
            missing = sorted(set(first) - set(sources[model]))
            extra = sorted(set(sources[model]) - set(first))
            raise ImportError_(f"{_FIELD}: models {names[0]} and {model} have different layers ("
                               + "; ".join(part for part in (f"{model} lacks {', '.join(missing)}" if missing else "",
                                                             f"{model} adds {', '.join(extra)}" if extra else "")
                                           if part) + ")")
    n_rows = next(iter(first.values()))[2][0]
    for model in names:
        for layer, (file, key, shape, _) in sources[model].items():
            where = f"{file}[{key}]" if key else file
            if shape[0] != n_rows:
                raise ImportError_(f"{_FIELD}: row counts differ: {where} (model {model}, layer {layer}) has "
                                   f"{shape[0]} examples, model {names[0]} has {n_rows}")
            reference = first[layer][2]
            if len(shape) != len(reference) or shape[2:] != reference[2:]:
                raise ImportError_(f"{_FIELD}: layer {layer} is {shape} in model {model} but {reference} in "
                                   f"model {names[0]}: only the neurons (axis 1) may differ")
    shapes = {model: {layer: source[2] for layer, source in sources[model].items()} for model in names}
    return ImportScan(tuple(names), tuple(first), shapes,
                      {model: {layer: source[:2] for layer, source in sources[model].items()} for model in names})


def select_imported(layers: tuple[str, ...], selectors, *, field: str = "layers") -> list[str]:
    """The imported layers ``selectors`` choose (exact names or globs), in the import's order.

    Raises
    ------
    ValueError
        ``<field>[i]: ...`` for a selector that matches no imported layer, listing them.
    """
    import fnmatch

    chosen: set[str] = set()
    for index, selector in enumerate(selectors):
        found = set(fnmatch.filter(layers, selector)) if any(c in selector for c in "*?[") else \
            ({selector} & set(layers))
        if not found:
            raise ValueError(f"{field}[{index}]: no imported layer {selector!r}; the files hold "
                             f"{', '.join(layers)} (select by name or glob)")
        chosen |= found
    return [layer for layer in layers if layer in chosen]


# ------------------------------------------------------------------------------------------------ reading


def _read(file: str, key: str | None) -> np.ndarray:
    if key is None:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    with np.load(file, allow_pickle=False) as archive:
        return archive[key]


def imported_model_ids(spec: Any) -> dict[str, str]:
    """Each model's id: the first 16 hex characters of the SHA-256 of its arrays, every value checked finite.

    Parameters
    ----------
    spec : raymatch.extract.import_spec.ActivationImport

    Returns
    -------
    dict of str to str
        Model name → id, in population order. Reads every file once (cached while the files are unchanged).

    Raises
    ------
    ImportError_
        A NaN or infinite value (naming the file, model and layer), or a problem of :func:`scan_import`.
    """
    return dict(_model_ids(_spec_key(spec), _signature(spec)))


@functools.lru_cache(maxsize=16)
def _model_ids(key: tuple, signature: tuple) -> dict[str, str]:
    scan = _scan(*key, signature)
    ids = {}
    for model in scan.models:
        hasher = hashlib.sha256()
        for layer in scan.layers:
            file, key = scan.sources[model][layer]
            array = np.ascontiguousarray(_read(file, key))
            if array.dtype.kind == "f":
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                if bad:
                    raise ImportError_(f"{_FIELD}: {file}{f'[{key}]' if key else ''} (model {model}, layer "
                                       f"{layer}) has {bad} NaN or infinite value(s)")
            hasher.update(f"{layer}\0{array.shape}\0{array.dtype.str}\0".encode())
            hasher.update(memoryview(array).cast("B"))
        ids[model] = hasher.hexdigest()[:_ID_HEX_CHARS]
    return ids


# ------------------------------------------------------------------------------------------------ writing


def import_model(store: Store, spec: Any, probe: Any, job: ImportJob, *, batch_size: int = 1024) -> dict:
    """Write one model's imported layers into the store, as extracted matrices (manifests, row sampling).

    Parameters
    ----------
    store : Store
    spec : raymatch.extract.import_spec.ActivationImport
    probe : raymatch.probes.ProbeSpec
        The study's (``imported``) probe: its id names the matrices and its ``rows`` samples conv layers.
    job : ImportJob
        The model and the layers to write (those not stored yet).
    batch_size : int, default 1024
        Examples converted to float32 at a time.

    Returns
    -------
    dict
        ``model``, ``model_id``, ``layers`` written and their ``outputs`` (as :func:`extract_model` returns them).
    """
    import torch

    from .extractor import extract_model
    from .replay import Replay

    scan = scan_import(spec)
    outputs = {}
    for layer in job.layers:  # one array in memory at a time
        file, key = scan.sources[job.model][layer]
        replay = Replay(layer, _read(file, key))
        index = torch.arange(scan.n_examples)
        outputs.update(extract_model(store, replay, job.model_id, index, probe, [layer], batch_size=batch_size))
    return {"model": job.model, "model_id": job.model_id, "layers": list(job.layers), "outputs": outputs}
