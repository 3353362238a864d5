"""Cleaning up a store (``raymatch gc``): old temporary objects, and what no recorded study references.

Two kinds of garbage:

- *temporary objects* older than an age: a local store writes every object to ``.tmp-<hex>`` beside it and renames
  it (:meth:`raymatch.store.Store.write_bytes`), and checks that it can write with ``_raymatch_probe-<hex>`` at the
  root; a process killed in between leaves them behind. So does a driver that died: its heartbeat object
  (``heartbeats/<run id>.json``) and its claims on tasks (``leases/…``, :mod:`raymatch.engine.leases`), once older
  than the age at which its run counts as abandoned (a live driver renews them sooner).
- *unreferenced objects*: what studies compute and store under content-derived keys
  (:mod:`raymatch.store.layout`) — activations ``activations/<probe id>/<model id>/…``, factors
  ``factors/<version>/<probe id>/<model id>/…`` and the checkpoints a study trains
  ``checkpoints/<arch>/(un)trained-<digest>/…`` — that no recorded study (``studies/<name>.json``, its current
  configuration) uses: a study's probe and models (every checkpoint of its population, its null baseline)
  reference their activations and factors of the current :data:`~raymatch.store.layout.FACTOR_VERSION`; its
  population references its checkpoints and their training records. Anything else (user checkpoints,
  ``studies/``, ``results/``) is never a candidate.
- *replaced table files*: the Parquet files of a results table (``results/<table>/``) that compaction replaced and
  that no version of the table younger than the age uses (Delta Lake's ``vacuum``, its retention rounded up to
  whole hours). Until then a reader of an older version (another driver, a running query) keeps its files; after,
  a query reads only the current files, and the table's folder holds only those.

Nothing is deleted while a run may still write: a ``running`` run whose heartbeat is fresh (not ``abandoned``,
:func:`raymatch.engine.record.run_state`) makes :func:`collect_garbage` refuse. Nor is anything unreferenced deleted
while a study record cannot be planned (its checkpoints missing, say): what it references is not known then.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from dataclasses import dataclass, field

from ..store import Store, StoreError
from ..store.layout import (
    FACTOR_VERSION,
    MANIFEST,
    heartbeats_prefix,
    leases_prefix,
    study_records_prefix,
    table_prefix,
)
from .record import ABANDONED_AFTER_HEARTBEATS, heartbeat_seconds, last_heard, run_state

__all__ = ["GarbagePlan", "StoredObject", "collect_garbage", "garbage_lines", "live_runs", "parse_age", "plan_garbage",
           "size_text"]

#: Names of temporary objects: a local write's ``.tmp-<hex>``, and a write check's ``_raymatch_probe-<hex>``.
_TEMPORARY = re.compile(r"^(\.tmp-[0-9a-f]{32}|_raymatch_probe-[0-9a-f]{32})$")
#: Where derived objects live, and how many key parts name one object group (shown together).
_DERIVED = {"activations": 3, "factors": 4, "checkpoints": 3}
_TRAINED = re.compile(r"^checkpoints/[^/]+/(un)?trained-[0-9a-f]+/")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """Seconds of an age written ``90``, ``45s``, ``30m``, ``1h`` or ``2d``; ``ValueError`` otherwise."""
    match = _AGE.match(str(text))
    if not match:
        raise ValueError(f"--older-than: write an age like 45s, 30m, 1h or 2d; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class StoredObject:
    """One object of the store: its key, size in bytes and age in seconds."""

    key: str
    size: int
    age: float


@dataclass
class GarbagePlan:
    """What :func:`collect_garbage` would delete, and what stops it.

    Attributes
    ----------
    temporary : list of StoredObject
        Temporary objects older than the age.
    unreferenced : list of StoredObject
        Derived objects no recorded study references (empty while ``unresolved`` is not).
    live_runs : list of dict
        ``run_id``, ``study`` and ``seconds`` since the heartbeat of each run that may still write.
    replaced : dict
        Results table → its files that compaction replaced and no version younger than the age uses.
    unresolved : dict
        Study name → why its references are not known (nothing unreferenced is deleted then).
    records : dict
        Study record key → config hash, as planned (to see a change before deleting).
    """

    temporary: list[StoredObject] = field(default_factory=list)
    unreferenced: list[StoredObject] = field(default_factory=list)
    replaced: dict[str, list[StoredObject]] = field(default_factory=dict)
    live_runs: list[dict] = field(default_factory=list)
    unresolved: dict[str, str] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)
    older_than: float = 3600.0

    @property
    def objects(self) -> list[StoredObject]:
        """Everything to delete."""
        return self.temporary + self.unreferenced + [item for items in self.replaced.values() for item in items]

    def groups(self) -> dict[str, tuple[int, int]]:
        """Unreferenced objects by group (``activations/<probe>/<model>/`` …): (objects, bytes)."""
        found: dict[str, tuple[int, int]] = {}
        for item in self.unreferenced:
            parts = item.key.split("/")
            group = "/".join(parts[:_DERIVED[parts[0]]]) + "/"
            count, size = found.get(group, (0, 0))
            found[group] = (count + 1, size + item.size)
        return found


def _modified(info: dict) -> _dt.datetime | None:
    """When an object was last written, from an fsspec ``info`` (local ``mtime``, S3 ``LastModified``)."""
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    return None


def _objects(store: Store, now: _dt.datetime) -> list[StoredObject]:
    """Every object under the store's root (hidden names included), with size and age."""
    try:
        found = store.fs.find(store.root, detail=True) if store.fs.exists(store.root) else {}
    except Exception as error:
        raise StoreError(f"cannot list store {store.uri}: {error or type(error).__name__}") from None
    start = len(store.root) + 1
    objects = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        path = str(path)
        key = path[start:] if path.startswith(store.root + "/") else path
        modified = _modified(info)
        age = (now - modified).total_seconds() if modified is not None else 0.0
        objects.append(StoredObject(key, int(info.get("size") or 0), age))
    return sorted(objects, key=lambda item: item.key)


def _references(store: Store, record: dict) -> tuple[set[str], set[str]]:
    """Keys and key prefixes one study record references (see the module's description)."""
    from ..study import Study
    from .planning import make_plan

    study = Study.from_dict(record["config"])
    plan = make_plan(study, store)
    keys: set[str] = set()
    prefixes: set[str] = set()
    for group in plan.groups:
        if group.prefix:
            prefixes.add(group.prefix + "/")
        for key in group.checkpoints:
            keys.add(key)
            if key.endswith(".safetensors"):
                keys.add(key[: -len(".safetensors")] + ".json")  # its training record
    probe = study.probe_id
    for model in plan.model_ids.values():
        prefixes.add(f"activations/{probe}/{model}/")
        prefixes.add(f"factors/{FACTOR_VERSION}/{probe}/{model}/")
    return keys, prefixes


def _study_records(store: Store) -> dict[str, dict]:
    return {key: store.read_json(key) for key in store.list(study_records_prefix()) if key.endswith(".json")}


def live_runs(store: Store, now: _dt.datetime) -> list[dict]:
    """The runs that may still write: ``running``, with a heartbeat younger than the abandonment age."""
    from ..results import query

    runs = query(store, "SELECT run_id, study, status, updated_at FROM runs WHERE status = 'running'")
    runs["updated_at"] = last_heard(store, runs)  # the heartbeat objects of the running ones
    heartbeat = heartbeat_seconds()
    return [{"run_id": row.run_id, "study": row.study, "seconds": (now - row.updated_at).total_seconds()}
            for row in runs.itertuples() if run_state(row.status, row.updated_at, now=now,
                                                      heartbeat=heartbeat) == "running"]


def _is_candidate(key: str) -> bool:
    """Whether ``key`` is a derived object gc may find unreferenced (never a user's own file)."""
    parts = key.split("/")
    if any(part.startswith(".") for part in parts) or parts[0] not in _DERIVED:
        return False
    if parts[0] == "checkpoints":
        return bool(_TRAINED.match(key))
    return len(parts) > _DERIVED[parts[0]]


def plan_garbage(store: Store, *, older_than: float, now: _dt.datetime | None = None) -> GarbagePlan:
    """What :func:`collect_garbage` would delete from ``store``, deleting nothing.

    Parameters
    ----------
    store : Store
    older_than : float
        Seconds: temporary objects younger than this are kept (a write may be going on).
    now : datetime, optional
        The current UTC time (default: now).

    Returns
    -------
    GarbagePlan
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    plan = GarbagePlan(live_runs=live_runs(store, now), older_than=older_than)
    objects = _objects(store, now)
    plan.temporary = [item for item in objects
                      if _TEMPORARY.match(item.key.rsplit("/", 1)[-1]) and item.age >= older_than]
    silent = max(older_than, ABANDONED_AFTER_HEARTBEATS * heartbeat_seconds())  # a live driver rewrites it sooner
    plan.temporary += [item for item in objects  # a dead driver's heartbeat and claims (leases)
                       if item.key.startswith((f"{heartbeats_prefix()}/", f"{leases_prefix()}/")) and item.age > silent]
    keys: set[str] = set()
    prefixes: set[str] = set()
    for key, record in _study_records(store).items():
        plan.records[key] = record.get("config_hash")
        try:
            found_keys, found_prefixes = _references(store, record)
        except Exception as error:  # a study that cannot be planned: what it references is not known
            plan.unresolved[record.get("name") or key] = f"{type(error).__name__}: {error}"
            continue
        keys |= found_keys
        prefixes |= found_prefixes
    plan.replaced = _replaced_table_files(store, objects, older_than)
    if not plan.unresolved:
        plan.unreferenced = [item for item in objects if _is_candidate(item.key) and item.key not in keys
                             and not any(item.key.startswith(prefix) for prefix in prefixes)]
    return plan


def _retention_hours(older_than: float) -> int:
    """Delta Lake's vacuum retention for an age in seconds: whole hours, rounded up (never younger than asked)."""
    return math.ceil(older_than / 3600)


def _replaced_table_files(store: Store, objects: list[StoredObject], older_than: float) -> dict[str, list]:
    """Per results table, its files that no version younger than ``older_than`` seconds uses (a vacuum's dry run)."""
    from ..results import vacuum_table

    sizes = {item.key: item for item in objects}
    tables = sorted({item.key.split("/")[1] for item in objects
                     if item.key.startswith("results/") and "/_delta_log/" in item.key})
    replaced = {}
    for table in tables:
        files = vacuum_table(store, table, retention_hours=_retention_hours(older_than), dry_run=True)
        keys = [f"{table_prefix(table)}/{name}" for name in files]
        if keys:
            replaced[table] = [sizes.get(key, StoredObject(key, 0, 0.0)) for key in keys]
    return replaced


def _delete_order(item: StoredObject) -> tuple[int, str]:
    """Completion markers first (manifests, training records): an object is gone before its parts."""
    name = item.key.rsplit("/", 1)[-1]
    marker = name == MANIFEST or (item.key.startswith("checkpoints/") and name.endswith(".json"))
    return (0 if marker else 1, item.key)


def collect_garbage(store: Store, plan: GarbagePlan) -> tuple[int, int]:
    """Delete what ``plan`` lists; refused while a run may still write or the study records changed.

    Parameters
    ----------
    store : Store
    plan : GarbagePlan
        From :func:`plan_garbage` on the same store.

    Returns
    -------
    tuple of int
        Objects deleted, bytes freed.

    Raises
    ------
    ValueError
        A run may still write (it is named), or the study records changed since ``plan`` was made: nothing is
        deleted.
    StoreError
        The store cannot be written.
    """
    now = _dt.datetime.now(_dt.timezone.utc)
    live = live_runs(store, now)  # again: a run may have started since the plan was made
    if live:
        run = live[0]
        raise ValueError(f"gc refused: run {run['run_id']} of study {run['study']} is running (heartbeat "
                         f"{run['seconds']:.0f} s ago) and may still write; nothing deleted (run gc once it ends, "
                         "or once status shows it abandoned)")
    records = {key: record.get("config_hash") for key, record in _study_records(store).items()}
    if records != plan.records:
        raise ValueError("gc refused: the store's study records changed while gc was planning (a run started?); "
                         "nothing deleted: run gc again")
    items = sorted(plan.temporary + plan.unreferenced, key=_delete_order)
    for start in range(0, len(items), 500):
        paths = [store.path(item.key) if not item.key.rsplit("/", 1)[-1].startswith(".")
                 else f"{store.root}/{item.key}" for item in items[start:start + 500]]
        try:
            store.fs.rm(paths)
        except FileNotFoundError:
            continue
        except Exception as error:
            raise StoreError(f"cannot delete from store {store.uri}: {error or type(error).__name__}") from None
    if store.is_local:
        _remove_empty_folders(store.root, [item.key for item in items])
    from ..results import vacuum_table

    for table, files in plan.replaced.items():  # through the table's own vacuum, which logs what it removed
        vacuum_table(store, table, retention_hours=_retention_hours(plan.older_than))
        items += files
    return len(items), sum(item.size for item in items)


def _remove_empty_folders(root: str, keys: list[str]) -> None:
    """Remove the folders the deleted keys leave empty, up to (not including) the top-level folders."""
    folders = {os.path.dirname(key) for key in keys}
    for folder in sorted(folders, key=lambda name: name.count("/"), reverse=True):
        while folder and "/" in folder:
            path = os.path.join(root, folder)
            try:
                os.rmdir(path)  # only when empty
            except OSError:
                break
            folder = os.path.dirname(folder)


def size_text(n: float) -> str:
    """A size in bytes as ``512 B``, ``3.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def garbage_lines(found: GarbagePlan, uri: str, older_than: str) -> list[str]:
    """What ``raymatch gc`` prints of a plan: the totals, each object or group, and what stops it deleting."""
    lines = [f"store {uri}: {len(found.temporary)} temporary object(s) older than {older_than} "
             f"({size_text(sum(item.size for item in found.temporary))}), {len(found.unreferenced)} object(s) no "
             f"recorded study references ({size_text(sum(item.size for item in found.unreferenced))}), "
             f"{sum(map(len, found.replaced.values()))} results-table file(s) replaced by compaction"]
    lines += [f"  temporary     {item.key}  ({size_text(item.size)}, {item.age / 3600:.1f} h old)"
              for item in found.temporary]
    lines += [f"  unreferenced  {group}  ({count} object(s), {size_text(size)})"
              for group, (count, size) in found.groups().items()]
    lines += [f"  replaced      {table_prefix(table)}/  ({len(files)} file(s) compaction replaced, "
              f"{size_text(sum(item.size for item in files))})" for table, files in found.replaced.items()]
    lines += [f"study {name} cannot be planned ({reason}): what it references is not known, so nothing "
              "unreferenced is deleted" for name, reason in found.unresolved.items()]
    lines += [f"run {run['run_id']} of study {run['study']} is running (heartbeat {run['seconds']:.0f} s ago): gc "
              "deletes nothing while a run may still write" for run in found.live_runs]
    return lines

