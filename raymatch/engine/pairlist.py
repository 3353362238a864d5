"""Pairs of models held as arrays: what the planner keeps per pair is 8 bytes, not Python objects.

A population of M models has M(M − 1)/2 pairs per layer: 499,500 for 1,000 models. As tuples of model ids that is
about 64 bytes a pair per layer and group, and the stored rows' identities read back as tuples of fresh strings
about 300 bytes a row. Here a :class:`PairList` keeps two ``int32`` arrays of positions into one tuple of model
ids (shared, never copied), and :class:`StoredPairs` keeps, per (population, layer, repeat), the sorted ``int64``
codes of the pairs a table holds, read from a scan one batch at a time. A :class:`~raymatch.engine.tasks.MatchTask`
holds its pairs as a :class:`PairList` of its own models.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["PairList", "StoredPairs", "policy_positions"]


class PairList(Sequence):
    """An immutable sequence of ``(model_a, model_b)`` pairs: positions into a tuple of model ids.

    Iterating, indexing and comparing behave as for a tuple of pairs (``pairs == (("a", "b"),)`` compares the
    pairs); slicing or indexing with an array of positions or a boolean mask gives a :class:`PairList` sharing the
    same models.

    Parameters
    ----------
    models : sequence of str
        The model ids that the positions refer to.
    a, b : array_like of int
        Positions in ``models`` of each pair's model a and model b, of the same length.
    """

    __slots__ = ("_hash", "a", "b", "models")

    def __init__(self, models: Sequence[str], a, b):
        self.models = models if isinstance(models, tuple) else tuple(models)
        self.a = np.asarray(a, dtype=np.int32).reshape(-1)
        self.b = np.asarray(b, dtype=np.int32).reshape(-1)
        if self.a.shape != self.b.shape:
            raise ValueError(f"a and b must have the same length; got {self.a.size} and {self.b.size}")
        self._hash = None

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]], models: Sequence[str] = ()) -> PairList:
        """The pairs given as ``(model_a, model_b)`` tuples; ``models`` first, then new ids in order of appearance."""
        if isinstance(pairs, PairList) and not models:
            return pairs
        index = {model: i for i, model in enumerate(models)}
        a, b = [], []
        for first, second in pairs:
            a.append(index.setdefault(first, len(index)))
            b.append(index.setdefault(second, len(index)))
        return cls(tuple(index), a, b)

    def __len__(self) -> int:
        return int(self.a.size)

    def __getitem__(self, item: Any):
        if isinstance(item, (int, np.integer)):
            return self.models[self.a[item]], self.models[self.b[item]]
        return PairList(self.models, self.a[item], self.b[item])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        models = self.models
        for i, j in zip(self.a.tolist(), self.b.tolist(), strict=True):
            yield models[i], models[j]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(tuple(mine) == tuple(theirs) for mine, theirs in zip(self, other, strict=True))

    def __hash__(self) -> int:  # as the tuple of the same pairs, which compares equal
        if self._hash is None:
            self._hash = hash(tuple(self))
        return self._hash

    def __repr__(self) -> str:
        shown = ", ".join(repr(pair) for pair in itertools.islice(self, 3))
        return f"PairList([{shown}{', …' if len(self) > 3 else ''}], {len(self)} pairs)"

    def __getstate__(self):
        return self.models, self.a, self.b

    def __setstate__(self, state) -> None:
        self.models, self.a, self.b = state
        self._hash = None

    def used_models(self) -> list[str]:
        """The models of the pairs, each once, in order of first appearance (a, b, a, b, …)."""
        order = np.stack([self.a, self.b], axis=1).reshape(-1)
        _, first = np.unique(order, return_index=True)
        return [self.models[order[i]] for i in np.sort(first)]

    def compact(self) -> PairList:
        """The same pairs over :meth:`used_models` only (what a task ships to its worker)."""
        used = self.used_models()
        index = np.full(len(self.models), -1, dtype=np.int32)
        lookup = {model: i for i, model in enumerate(self.models)}
        for new, model in enumerate(used):
            index[lookup[model]] = new
        return PairList(tuple(used), index[self.a], index[self.b])

    def as_lists(self) -> list[list[str]]:
        """``[[model_a, model_b], …]`` (what a task id digests: the same JSON as a tuple of tuples)."""
        return [[a, b] for a, b in self]


def policy_positions(policy: str, n: int, reference: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~raymatch.study.pair_positions` as two arrays of positions, without a tuple per pair.

    Same pairs, same order: ``all`` is ``itertools.combinations(range(n), 2)``, ``consecutive`` ``(i, i + 1)``,
    ``reference`` ``(reference, i)`` for every other ``i``.
    """
    if policy == "all":
        return np.triu_indices(n, k=1)
    if policy == "consecutive":
        return np.arange(n - 1), np.arange(1, n)
    others = np.array([i for i in range(n) if i != reference], dtype=np.int64)
    return np.full(others.size, reference, dtype=np.int64), others


class StoredPairs:
    """The pairs a results table holds, per (population, layer, repeat), as sorted codes of two model numbers.

    Built from a scan of the table's identity columns one batch at a time (:func:`~raymatch.results.scan_columns`):
    what it keeps is 8 bytes per distinct stored pair, and the model ids once.

    Parameters
    ----------
    batches : iterable of pyarrow.RecordBatch
        With the columns ``population``, ``layer``, ``repeat``, ``model_a`` and ``model_b``.
    """

    def __init__(self, batches: Iterable):
        self.models: dict[str, int] = {}
        names: dict[str, int] = {}  # populations and layers
        parts: dict[tuple[int, int, int], list[np.ndarray]] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            a, b = (_numbers(batch.column(name), self.models) for name in ("model_a", "model_b"))
            codes = (a << 32) | b
            units = np.stack([_numbers(batch.column("population"), names), _numbers(batch.column("layer"), names),
                              batch.column("repeat").to_numpy(zero_copy_only=False).astype(np.int64)], axis=1)
            keys, inverse = np.unique(units, axis=0, return_inverse=True)
            for k, key in enumerate(keys.tolist()):
                parts.setdefault(tuple(key), []).append(codes[inverse.reshape(-1) == k])
        by_number = {number: name for name, number in names.items()}
        self.codes = {(by_number[population], by_number[layer], repeat): np.unique(np.concatenate(chunks))
                      for (population, layer, repeat), chunks in parts.items()}

    def __len__(self) -> int:
        return sum(codes.size for codes in self.codes.values())

    def __contains__(self, key: tuple) -> bool:
        """``(population, layer, repeat, model_a, model_b) in stored``."""
        population, layer, repeat, a, b = key
        return bool(self.contains(population, layer, repeat, PairList.of([(a, b)]))[0])

    def contains(self, population: str, layer: str, repeat: int, pairs: PairList) -> np.ndarray:
        """Whether the table holds each of ``pairs`` for this unit: a boolean array aligned with ``pairs``."""
        stored = self.codes.get((population, layer, int(repeat)))
        if stored is None or not len(pairs):
            return np.zeros(len(pairs), dtype=bool)
        numbers = np.array([self.models.get(model, -1) for model in pairs.models], dtype=np.int64)
        a, b = numbers[pairs.a], numbers[pairs.b]
        known = (a >= 0) & (b >= 0)
        return known & np.isin((a << 32) | np.where(known, b, 0), stored)


def _numbers(column, numbering: dict[str, int]) -> np.ndarray:
    """The number of each value of a string column in ``numbering`` (new values numbered as they come)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column)
    numbers = np.array([numbering.setdefault(value, len(numbering)) for value in encoded.dictionary.to_pylist()],
                       dtype=np.int64)
    return numbers[encoded.indices.to_numpy(zero_copy_only=False)]
