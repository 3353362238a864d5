"""Activation extraction: layer selection, forward hooks with row sampling, Ray actor pool."""

from .extractor import ExtractionJob, extract_model, read_checkpoint, run_job
from .layers import LAYER_TYPES, resolve_layers, select_layers

__all__ = ["LAYER_TYPES", "ExtractionJob", "extract_model", "read_checkpoint", "resolve_layers", "run_job",
           "select_layers"]
