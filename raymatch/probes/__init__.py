"""Probe datasets that work offline, and deterministic row/position sampling for conv layers.

:func:`load_dataset` reads scikit-learn's digits, Fashion-MNIST (idx files) or CIFAR-10 (binary batches);
:mod:`.files` reads the user's own images, arrays and Parquet tables;
:class:`ProbeSpec` fixes a probe's content (and its :attr:`~ProbeSpec.id`); :func:`load_probe` turns a spec into
input images and :func:`sample_rows` picks the (image, position) rows every model of a population shares.
"""

from .datasets import DatasetError, available_datasets, load_dataset
from .spec import ProbeSpec, RowSample, load_probe, probe_size, row_positions, sample_rows
from .text import TextProbe, TextProbeError, make_text_probe, read_texts
from .token_rows import TokenRows
from .tokenizer import TokenizerError, has_tokenizer, load_tokenizer, same_tokenizer, tokenizer_fingerprint

__all__ = [
    "DatasetError",
    "ProbeSpec",
    "RowSample",
    "TextProbe",
    "TextProbeError",
    "TokenRows",
    "TokenizerError",
    "available_datasets",
    "has_tokenizer",
    "load_dataset",
    "load_probe",
    "load_tokenizer",
    "make_text_probe",
    "probe_size",
    "read_texts",
    "row_positions",
    "same_tokenizer",
    "sample_rows",
    "tokenizer_fingerprint",
]
