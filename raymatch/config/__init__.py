"""One configuration layer: frozen pydantic models that report every problem at once, each under its field path.

Study files (:mod:`raymatch.study`), probe specs (:class:`~raymatch.probes.ProbeSpec`), architectures
(:class:`~raymatch.models.Architecture`) and training specs (:class:`~raymatch.train.TrainingSpec`) are all
:class:`Config` models (:mod:`.base`) whose fields are the types of :mod:`.types`. Whether a model is built from a
mapping (:meth:`Config.from_dict`) or by its constructor, every field is checked, the checks that relate fields to
each other run on whatever fields did validate, and one :class:`ConfigError` lists every problem as a line
``field.path: message`` (``probe.rows.repeats: must be a positive integer; got 0``, ``eps[1]: must lie in [0, 1];
got 1.5``).
"""

from .base import (
    Config,
    ConfigError,
    Loc,
    checked_by,
    duplicate,
    invalid,
    is_integer,
    is_number,
    problem_at,
    problems_of,
    relocated,
    shown,
)
from .paths import (
    LOCAL_PATH,
    OptionalLocalPath,
    local_path,
    path_fields,
    resolve_path,
    resolve_paths,
    unresolved_paths,
)
from .types import (
    Boolean,
    Eps,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    OptionalNonNegativeInt,
    OptionalPath,
    OptionalPositiveInt,
    OptionalPositiveNumber,
    OptionalString,
    Path,
    PositiveInt,
    PositiveNumber,
    ProperFraction,
    Seeds,
    String,
    distinct,
    eps_grid,
    is_list,
    one_of,
    optional,
    strings,
    worded,
)

__all__ = [
    "LOCAL_PATH",
    "Boolean",
    "Config",
    "ConfigError",
    "Eps",
    "Loc",
    "NonNegativeInt",
    "NonNegativeNumber",
    "Number",
    "OptionalLocalPath",
    "OptionalNonNegativeInt",
    "OptionalPath",
    "OptionalPositiveInt",
    "OptionalPositiveNumber",
    "OptionalString",
    "Path",
    "PositiveInt",
    "PositiveNumber",
    "ProperFraction",
    "Seeds",
    "String",
    "checked_by",
    "distinct",
    "duplicate",
    "eps_grid",
    "invalid",
    "is_integer",
    "is_list",
    "is_number",
    "local_path",
    "one_of",
    "optional",
    "path_fields",
    "problem_at",
    "problems_of",
    "relocated",
    "resolve_path",
    "resolve_paths",
    "shown",
    "strings",
    "unresolved_paths",
    "worded",
]
