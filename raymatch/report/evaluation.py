"""``raymatch evaluate-measures STORE``: Ding et al.'s tests of what each measure sees, on a study's trained population.

The tests themselves are :mod:`raymatch.match.sensitivity` (pure, on arrays); this module reads what they need
from a study store, runs them and stores the result:

- the study (its record ``studies/<name>.json``: layers, put in network order by :func:`depth_order`, ε grid,
  ``center``), its trained models (the ``models`` view, by seed) and its probe (the ``curves`` rows), all of its
  current configuration;
- each trained model's stored activations of every layer (repeat 0), read with
  :func:`~raymatch.store.read_activations`.

The tests, for every measure of :data:`~raymatch.match.MEASURES` and the subspace match at each ε of the grid:

- *principal-component deletion*: every layer of every trained model against itself with its top k principal
  components deleted, k on a grid below the rank of its centred activations; per measure the mean over (model,
  layer) of the Spearman ρ of k against the dissimilarity (0 where the measure never moves), the share of them in
  which it moved at all, and the median of where it stops noticing (as a share of the layer's components);
- *depth*: layer i of one seed against layer j of another, over every pair of different seeds and every two layers
  compared over the same rows; the Spearman ρ between |i − j| (positions in network order) and the dissimilarity;
- *specificity*: per layer ℓ, the same layer of another seed against layer ℓ + 1 of the same seed: the probability
  that the other seed is rated less dissimilar (1: always; 0.5: the measure cannot tell).

Two layers are compared over the same rows only. Layers with one row per example are compared as stored; a conv
layer stored with every position (``probe.rows: all``) is averaged over its positions, one row per example (as
``cross_layers.pool: mean`` does), so that it compares with every per-example layer; a conv layer with sampled
rows is compared with the layers of the same row sample (same spatial shape), or through its stored per-example
mean (``<layer>+mean``, stored with ``cross_layers.pool: mean``) where there is one. The deletion test reads each
layer as stored.

The result is a JSON object in the store, ``evaluations/<study>/<config hash>.json``
(:func:`~raymatch.store.layout.evaluation_key`): the settings, the table (one row per measure) and the raw
per-test values. ``raymatch report`` draws it (``measure_evaluation.png``) when it is there.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..match import MEASURES, cross_product, factor, match_curve, measure_counts, pair_measures
from ..match.sensitivity import depth_test, match_key, pc_deletion, specificity_test
from ..store import ActivationKey, Store, layout, read_activations
from ..store.activations import read_manifest

__all__ = ["Evaluation", "depth_order", "evaluate_measures", "evaluation_rows", "format_evaluation", "read_evaluation"]

#: Deleted components: this many values of k, 0 and a geometric grid below the layer's number of components.
DELETION_POINTS = 8


@dataclass
class Evaluation:
    """What :func:`evaluate_measures` found and stored.

    Attributes
    ----------
    study, config_hash : str
    table : list of dict
        One row per measure: ``measure``, ``deletion_spearman`` (mean over models and layers; 0 where the measure
        never moved), ``deletion_moved`` (the share of them where it moved at all), ``deletion_stops_noticing``
        (share of the components deleted from which the measure no longer moves; median over models and layers),
        ``depth_spearman``, ``specificity`` (None where a test had nothing to compare).
    content : dict
        The stored JSON object (settings, table, per-test details).
    key : str
        Where it is stored.
    """

    study: str
    config_hash: str
    table: list[dict]
    content: dict
    key: str


_HIDDEN = re.compile(r"hidden_states\.(\d+)")
_BLOCK = re.compile(r"\.(\d+)(?:\.|$)")


def depth_order(layers) -> list[str]:
    """A study's layers in the order the forward pass reaches them (what the depth and specificity tests rank).

    A study records its layers in network order, except that a language-model study lists the modules first and
    then the residual stream ``hidden_states.k`` (:func:`raymatch.extract.tokens.token_layers`). Here
    ``hidden_states.k``, the output of block ``k − 1`` (``k = 0``: the embeddings), goes after the modules of that
    block and before those of block ``k``; a module's block is the first number in its path
    (``transformer.h.3.mlp.act``: 3); a module without one keeps its place before or after the numbered ones.
    Lists without ``hidden_states.k`` come back as they are.

    >>> depth_order(["transformer.h.0.mlp.act", "transformer.h.1.mlp.act", "hidden_states.1", "hidden_states.2"])
    ['transformer.h.0.mlp.act', 'hidden_states.1', 'transformer.h.1.mlp.act', 'hidden_states.2']
    """
    layers = list(layers)
    if not any(_HIDDEN.fullmatch(layer) for layer in layers):
        return layers
    seen_block = False

    def key(item: tuple[int, str]) -> tuple[float, int, int]:
        nonlocal seen_block
        index, layer = item
        hidden = _HIDDEN.fullmatch(layer)
        if hidden:
            return int(hidden.group(1)) - 1, 2, index
        block = _BLOCK.search(layer)
        if block:
            seen_block = True
            return int(block.group(1)), 1, index
        return (math.inf if seen_block else -math.inf), 1, index

    return [layer for _, layer in sorted(enumerate(layers), key=key)]


def _study(con, store: Store, study: str | None) -> tuple[str, dict]:
    studies = [row[0] for row in con.sql("SELECT DISTINCT study FROM curves ORDER BY study").fetchall()]
    if not studies:
        raise ValueError(f"store {store.uri} holds no match results of a study's current configuration; run a "
                         "study first")
    if study is None:
        if len(studies) > 1:
            raise ValueError(f"store {store.uri} holds several studies ({', '.join(studies)}): choose one with "
                             "--study NAME")
        study = studies[0]
    elif study not in studies:
        raise ValueError(f"study {study!r} has no match results in store {store.uri} (studies there: "
                         f"{', '.join(studies)})")
    record = store.read_json(layout.study_record_key(study))
    return study, record


def _trained_models(con, study: str) -> tuple[list[str], str]:
    """The trained models (by seed where the models table has them) and the probe id of the study's curves."""
    params = {"study": study}
    models = [row[0] for row in con.sql("""
        SELECT m.model, min(s.seed) AS seed
        FROM (SELECT model_a AS model FROM curves WHERE study = $study AND population = 'trained'
              UNION SELECT model_b FROM curves WHERE study = $study AND population = 'trained') m
        LEFT JOIN models s ON s.study = $study AND s.model_id = m.model
        GROUP BY m.model ORDER BY seed NULLS LAST, m.model""", params=params).fetchall()]
    if len(models) < 2:
        raise ValueError(f"study {study!r} has {len(models)} trained model(s) with match results: the tests compare "
                         "at least 2 seeds")
    probe = con.sql("SELECT any_value(probe_id) FROM curves WHERE study = $study AND population = 'trained'",
                    params=params).fetchall()[0][0]
    return models, probe


def _cross_matrix(store: Store, probe: str, model: str, layer: str, activations: np.ndarray,
                  manifest: dict) -> tuple[np.ndarray | None, str | None]:
    """The matrix a layer is compared across layers with, and the key of its rows (None: no comparison)."""
    policy, shape = manifest.get("row_policy", "all"), manifest.get("layer_shape") or [activations.shape[1]]
    positions = math.prod(shape[1:]) if len(shape) > 1 else 1
    n_images = manifest.get("n_images")
    if policy == "all" and positions > 1 and n_images and activations.shape[0] == n_images * positions:
        pooled = activations.reshape(n_images, positions, activations.shape[1]).mean(axis=1)
        return pooled, f"all:{n_images}"
    if policy == "all":
        return activations, f"all:{activations.shape[0]}"
    pooled_key = ActivationKey(probe, model, layout.pooled_layer(layer), 0)
    if store.exists(pooled_key.manifest):
        pooled = read_activations(store, pooled_key)
        return pooled, f"all:{pooled.shape[0]}"
    digest = policy.get("rows_sha256") if isinstance(policy, dict) else None
    return (activations, f"sample:{digest}") if digest else (None, None)


def _factors(matrix: np.ndarray, center: bool) -> tuple:
    """The factor the match reads (as the study makes it) and the centred one the measures read (exact)."""
    centred = factor(matrix, center=True)
    return (centred if center else factor(matrix)), centred


def _values(a: tuple, b: tuple, measures: tuple[str, ...], eps: tuple[float, ...], keep: float) -> dict[str, float]:
    """Every measure and the match at each ε of two layers, from their :func:`_factors`."""
    values = pair_measures(a[1], b[1], cross_product(a[1], b[1]), measures=measures, svcca_keep=keep)
    curve = match_curve(a[0], b[0], cross=cross_product(a[0], b[0]))
    values.update({match_key(e): curve.at(e).similarity for e in eps})
    return values


def evaluate_measures(store: Store, study: str | None = None, *, eps=None, points: int = DELETION_POINTS,
                      progress=None) -> Evaluation:
    """Run the deletion, depth and specificity tests on a study's trained population and store the result.

    Parameters
    ----------
    store : Store
    study : str, optional
        Needed when the store holds several studies.
    eps : sequence of float, optional
        The ε at which the subspace match is a measure (default: the study's grid).
    points : int, default 8
        Values of k in the deletion test (0 and a geometric grid below each layer's number of components).
    progress : callable, optional
        Called with a line of text as the tests go.

    Returns
    -------
    Evaluation

    Raises
    ------
    ValueError
        No study with match results, several and no ``study``, fewer than two trained models.
    """
    from ..results import connect

    say = progress or (lambda line: None)
    con = connect(store)
    try:
        study, record = _study(con, store, study)
        models, probe = _trained_models(con, study)
    finally:
        con.close()
    config = record.get("config") or {}
    layers = depth_order(record.get("layers") or [])
    eps = tuple(float(e) for e in (record.get("eps") or [] if eps is None else eps))
    center, keep = bool(config.get("center", False)), float(record.get("svcca_keep", 0.99))
    measures = tuple(MEASURES)
    names = [*measures, *map(match_key, eps)]

    deletion = {name: {"spearman": [], "stops": []} for name in names}
    crossing: dict[tuple[str, str], tuple] = {}  # (model, layer) → (factor for cross-layer tests, rows key)
    for model in models:
        for layer in layers:
            key = ActivationKey(probe, model, layer, 0)
            manifest = read_manifest(store, key)
            activations = read_activations(store, key, manifest=manifest).astype(np.float64)
            say(f"deletion: model {model}, layer {layer} ({activations.shape[0]} × {activations.shape[1]})")
            # the centred rank: deleting that many components leaves rounding, not a representation
            n_components = max(measure_counts(activations, activations)["rank_a"], 1)
            ks = np.unique(np.concatenate([[0], np.round(np.geomspace(1, max(n_components - 1, 1), points - 1))]))
            result = pc_deletion(activations, ks.astype(np.int64), measures=measures, eps=eps, svcca_keep=keep,
                                 center=center)
            for name in names:
                deletion[name]["spearman"].append(result.spearman[name])
                deletion[name]["stops"].append(result.stops_noticing[name] / n_components)
            matrix, rows = _cross_matrix(store, probe, model, layer, activations, manifest)
            crossing[model, layer] = (None if matrix is None else _factors(matrix, center), rows)

    # depth: layer i of seed s against layer j of seed s' (s < s'), NaN where the two have different rows
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    depth = {name: np.full((len(pairs), len(layers), len(layers)), np.nan) for name in names}
    for p, (a, b) in enumerate(pairs):
        say(f"depth: models {a} and {b}")
        for i, layer_a in enumerate(layers):
            for j, layer_b in enumerate(layers):
                (fa, rows_a), (fb, rows_b) = crossing[a, layer_a], crossing[b, layer_b]
                if fa is None or rows_a != rows_b:
                    continue
                for name, value in _values(fa, fb, measures, eps, keep).items():
                    depth[name][p, i, j] = value
    # specificity: layer ℓ of another seed (the depth matrices' diagonal) against layer ℓ + 1 of the same seed
    chained = [i for i in range(len(layers) - 1)
               if crossing[models[0], layers[i]][1] is not None
               and crossing[models[0], layers[i]][1] == crossing[models[0], layers[i + 1]][1]]
    other_seed = {name: [depth[name][:, i, i] for i in chained] for name in names}
    next_layer = {name: [[] for _ in chained] for name in names}
    for row, i in enumerate(chained):
        for model in models:
            say(f"specificity: model {model}, layers {layers[i]} and {layers[i + 1]}")
            values = _values(crossing[model, layers[i]][0], crossing[model, layers[i + 1]][0], measures, eps, keep)
            for name, value in values.items():
                next_layer[name][row].append(value)

    depth_rho = depth_test(depth) if pairs else {}
    specificity = specificity_test(other_seed, next_layer) if chained else {}
    table = [{"measure": name,
              "deletion_spearman": _mean([0.0 if v is None or not np.isfinite(v) else v
                                          for v in deletion[name]["spearman"]]),
              "deletion_moved": _mean([float(v is not None and bool(np.isfinite(v)))
                                       for v in deletion[name]["spearman"]]),
              "deletion_stops_noticing": _median(deletion[name]["stops"]),
              "depth_spearman": _finite(depth_rho.get(name)),
              "specificity": _finite(specificity.get(name))} for name in names]
    config_hash = record["config_hash"]
    compared = {f"{layers[i]}~{layers[j]}": bool(np.isfinite(depth[names[0]][:, i, j]).any())
                for i in range(len(layers)) for j in range(len(layers))} if pairs else {}
    content = {"study": study, "config_hash": config_hash, "code_version": __version__,
               "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "models": models, "layers": layers,
               "eps": list(eps), "svcca_keep": keep, "center": center, "deletion_points": points,
               "table": table, "depth_pairs_compared": compared,
               "specificity_layers": [layers[i] for i in chained],
               "deletion": {name: {"spearman": [_finite(v) for v in deletion[name]["spearman"]],
                                   "stops_noticing": deletion[name]["stops"]} for name in names}}
    key = layout.evaluation_key(study, config_hash)
    store.write_json(key, content)
    return Evaluation(study, config_hash, table, content, key)


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _median(values) -> float | None:
    return float(np.median(values)) if values else None


def read_evaluation(store: Store, study: str, config_hash: str) -> dict | None:
    """The stored evaluation of a study's configuration (:func:`evaluate_measures`' JSON object), or None."""
    key = layout.evaluation_key(study, config_hash)
    return store.read_json(key) if store.exists(key) else None


def evaluation_rows(content: dict) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the measure × test table of a stored evaluation."""
    header = ["measure", "PC deletion ρ", "moved in", "stops noticing (share deleted)", "depth ρ", "specificity"]
    cells = []
    for row in content["table"]:
        cells.append([row["measure"], *(_number(row.get(key)) for key in (
            "deletion_spearman", "deletion_moved", "deletion_stops_noticing", "depth_spearman", "specificity"))])
    return header, cells


def _number(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_evaluation(content: dict) -> str:
    """The measure × test table as plain text, for the terminal."""
    header, cells = evaluation_rows(content)
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """The arguments of ``raymatch evaluate-measures`` after ``STORE [--endpoint-url URL]``."""
    parser.add_argument("--study", metavar="NAME", help="the study to evaluate (needed when the store holds several)")
    parser.add_argument("--eps", type=float, action="append", metavar="E",
                        help="an ε at which the subspace match is a measure (repeat it; default: the study's grid)")
    parser.add_argument("--points", type=int, default=DELETION_POINTS,
                        help=f"values of k in the deletion test (default {DELETION_POINTS})")
    parser.add_argument("--progress", action="store_true", help="print a line as each model and layer is tested")


def command(args) -> int:
    """Run ``raymatch evaluate-measures``: the tests, the stored JSON object, the table printed; exit status 0."""
    from ..match.inputs import EPS_RULE, check_eps

    if args.points < 2:
        raise ValueError(f"--points must be at least 2; got {args.points}")
    try:
        eps = None if args.eps is None else [check_eps(value) for value in args.eps]
    except ValueError:
        raise ValueError(f"--eps must be {EPS_RULE}; got {args.eps}") from None
    store = Store.open_existing(args.store, endpoint_url=getattr(args, "endpoint_url", None))
    say = (lambda line: print(line, flush=True)) if args.progress else None
    result = evaluate_measures(store, args.study, eps=eps, points=args.points, progress=say)
    content = result.content
    print(f"study {result.study} (config {result.config_hash}): what each measure sees on its {len(content['models'])} "
          f"trained models (Ding et al. 2021); dissimilarity = 1 − similarity, procrustes as it is")
    print(format_evaluation(content))
    print(f"depth: layer pairs compared over the same rows: "
          f"{sum(content['depth_pairs_compared'].values())} of {len(content['depth_pairs_compared'])}; "
          f"specificity: layers {', '.join(content['specificity_layers']) or 'none'}")
    print(f"stored {store.uri.rstrip('/')}/{result.key}")
    return 0
