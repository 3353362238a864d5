"""Study files: one YAML file that fully describes a population study, checked in one pass before anything runs.

A study compares the layers of many trained networks of one architecture (Wang et al. 2018): which checkpoints
(:class:`Population`), built how (:class:`Architecture`), fed which inputs (:class:`~raymatch.probes.ProbeSpec`),
which layers, which ε grid, which pairs of models, and where everything is stored (:class:`StoreConfig`).
:func:`load_study` reads such a file into a :class:`Study` and reports every problem it finds at once, each under
its field path (``layers[2]: unknown layer …``, ``resources.pair_block: must be a positive integer; got 0``);
:func:`study_json_schema` is the JSON Schema of such a file, for editors.

The study and its sections are pydantic models (:mod:`.spec`, :mod:`.models`, :mod:`.architecture`, on
:class:`raymatch.config.Config`, their keys' types in :mod:`.fields`); the checks between fields live in
:mod:`.checks` and :mod:`.imported`, the YAML loader and the schema in :mod:`.loader`. Nothing here imports Ray or
touches the store, and importing it imports no torch: layer selectors are checked against the architecture built on
PyTorch's ``meta`` device (no weights, no use of the global RNG) by the checks that need it.
"""

from ..models.architecture import Architecture
from ..train.spec import Training
from .checks import few_samples
from .loader import _StudyLoader as _StudyLoader  # (the security test checks which YAML loader is used)
from .loader import load_study, study_json_schema
from .models import (
    PAIR_POLICIES,
    Population,
    Resources,
    SimpleMatchesConfig,
    StoreConfig,
    StudyError,
    untrained_prefix,
)
from .spec import Study, pair_positions

__all__ = [
    "PAIR_POLICIES",
    "Architecture",
    "Population",
    "Resources",
    "SimpleMatchesConfig",
    "StoreConfig",
    "Study",
    "StudyError",
    "Training",
    "few_samples",
    "load_study",
    "pair_positions",
    "study_json_schema",
    "untrained_prefix",
]
