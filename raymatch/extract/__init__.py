"""Activation extraction: layer selection, forward hooks with row sampling, Ray actor pool."""

from .extractor import ExtractionJob, extract_model, read_checkpoint, run_job
from .layers import LAYER_TYPES, resolve_layers, select_layers
from .tokens import TokenExtractionJob, extract_tokens, run_token_job, token_layers

__all__ = ["LAYER_TYPES", "ExtractionJob", "TokenExtractionJob", "extract_model", "extract_tokens", "read_checkpoint",
           "resolve_layers", "run_job", "run_token_job", "select_layers", "token_layers"]
