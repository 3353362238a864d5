"""The legacy format: a store whose results raymatch 0.1.0 wrote (one Parquet object per task) is refused.

:func:`check_store_version` looks (a few listing requests) every time it is called; the readers and writers of the
tables call :func:`ensure_current_format`, which looks once per :class:`~raymatch.store.Store` object (a process
opens its store once: a run, a query, a report), so planning's reads and the driver's appends cost no listing each.
"""

from __future__ import annotations

import posixpath
import weakref

from ..store import Store, StoreError, layout

__all__ = ["LEGACY_TABLES", "check_store_version", "ensure_current_format"]

#: Tables of a 0.1.0 store that this version no longer has (``matches`` is now a view of ``curves``).
LEGACY_TABLES = ("matches", "cka")
#: Name of a Delta table's log folder.
DELTA_LOG = "_delta_log"

#: The stores found current in this process (by object: a new ``Store`` of the same URI is checked again).
_CURRENT: weakref.WeakSet[Store] = weakref.WeakSet()


def _results_root() -> str:
    return posixpath.dirname(layout.table_prefix("curves"))


def _children(store: Store, key: str) -> list[str]:
    """Names directly under ``key`` (one listing request on S3); empty when there is nothing."""
    try:
        entries = store.fs.ls(store.path(key), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    except Exception as error:
        raise StoreError(f"cannot list {key!r} in store {store.uri}: {error or type(error).__name__}") from None
    return sorted({posixpath.basename(str(entry).rstrip("/")) for entry in entries})


def _is_legacy_table(store: Store, key: str, name: str) -> bool:
    """Whether the folder ``key`` holds 0.1.0 task objects (``<task id>.parquet``, no Delta log)."""
    if name not in LEGACY_TABLES and store.exists(f"{key}/{DELTA_LOG}"):
        return False
    names = _children(store, key)
    if name in LEGACY_TABLES:
        return any(n.endswith(".parquet") for n in names)
    return any(n.endswith(".parquet") and not n.startswith("part-") for n in names)


def check_store_version(store: Store) -> None:
    """Refuse a store whose results were written by raymatch 0.1.0 (one Parquet object per task).

    A few listing requests: the ``results/`` folder, and the table folders without a Delta log. Looks every time
    it is called (and records the answer for :func:`ensure_current_format`).

    Raises
    ------
    ValueError
        One line naming the store, saying that it was written by raymatch 0.1.0 and what to do.
    StoreError
        The store cannot be listed.
    """
    _CURRENT.discard(store)
    root = _results_root()
    legacy = [f"{root}/{name}" for name in _children(store, root) if _is_legacy_table(store, f"{root}/{name}", name)]
    if legacy:
        raise ValueError(
            f"store {store.uri} was written by raymatch 0.1.0 (one Parquet object per task in {', '.join(legacy)}): "
            f"its rows hold matches at its ε grid only, with no ε-curves, and this version cannot read them; rerun "
            f"the study into a new store, or delete {store.url(root)} to recompute the results from the stored "
            f"activations and factors")
    _CURRENT.add(store)


def ensure_current_format(store: Store) -> None:
    """:func:`check_store_version`, once per ``store`` object: nothing more once it passed.

    Raises
    ------
    ValueError
        A 0.1.0 store.
    StoreError
        The store cannot be listed.
    """
    if store not in _CURRENT:
        check_store_version(store)
