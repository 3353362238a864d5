"""Storage: one store location (local folder or S3), atomic whole-object writes, activations and factors."""

from .activations import (
    ActivationKey,
    ActivationWriter,
    is_stored,
    iter_shards,
    read_activations,
    read_manifest,
    write_activations,
)
from .factors import cached_factor, factor_prefix, read_factor, write_factor
from .location import StoreLocation, StoreURIError, check_endpoint, check_uri, parse_uri
from .store import Store, StoreError, check_key, check_name
from .token_rows import read_token_rows

__all__ = [
    "ActivationKey",
    "ActivationWriter",
    "Store",
    "StoreError",
    "StoreLocation",
    "StoreURIError",
    "cached_factor",
    "check_endpoint",
    "check_key",
    "check_name",
    "check_uri",
    "factor_prefix",
    "is_stored",
    "iter_shards",
    "parse_uri",
    "read_activations",
    "read_factor",
    "read_manifest",
    "read_token_rows",
    "write_activations",
    "write_factor",
]
