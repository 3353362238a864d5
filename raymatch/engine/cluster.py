"""Checks of a study's store against where the run happens: inside a Ray job, on a cluster of several nodes.

Both refuse a store whose results would be lost or split, before anything is written (``raymatch run`` exits 2
with one line):

- :func:`check_store_in_job`, before Ray is joined: inside a submitted Ray job (``ray job submit``) a relative
  local store would resolve into Ray's temporary copy of the working directory
  (``<ray temp dir>/session_…/runtime_resources/working_dir_files/_ray_pkg_…``), which is deleted with the
  session: the user's checkout would get nothing.
- :func:`check_store_on_cluster`, once Ray is joined: on a cluster with more than one alive node, a local store
  is written by every node into its own disk unless the study declares it ``shared`` (one filesystem mounted by
  every node at the same path).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ..store import parse_uri

__all__ = ["alive_nodes", "check_store_in_job", "check_store_on_cluster", "local_store_path", "submitted_job_id"]

#: Set by Ray's job supervisor in the environment of a submitted job's entrypoint (and inherited by its
#: children): the job's runtime_env and metadata, which holds the submission id.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"

#: Where Ray unpacks a job's ``--working-dir`` (``runtime_resources/working_dir_files/_ray_pkg_<hash>``).
WORKING_DIR_MARK = os.sep.join(("", "runtime_resources", "working_dir_files", ""))


def submitted_job_id(environ: Mapping[str, str] | None = None, cwd: str | None = None) -> str | None:
    """The submission id of the Ray job this process runs in, or ``None`` outside one.

    Two signs, either enough: Ray's job supervisor starts a job's entrypoint with ``RAY_JOB_CONFIG_JSON_ENV_VAR``
    (JSON whose ``metadata.job_submission_id`` is the id, e.g. ``raysubmit_…``), and a job submitted with
    ``--working-dir`` runs in Ray's copy of it, a folder under ``…/runtime_resources/working_dir_files/``.
    Neither needs Ray to be imported or connected.

    Parameters
    ----------
    environ : mapping, optional
        The environment to look at (default ``os.environ``).
    cwd : str, optional
        The working directory to look at (default ``os.getcwd()``).

    Returns
    -------
    str or None
        The submission id (``'unknown'`` when only the working directory gives the job away).

    Examples
    --------
    >>> submitted_job_id({"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"metadata": {"job_submission_id": "raysubmit_x"}}'}, "/")
    'raysubmit_x'
    >>> submitted_job_id({}, "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12") is not None
    True
    >>> submitted_job_id({}, "/home/me/raymatch") is None
    True
    """
    environ = os.environ if environ is None else environ
    config = environ.get(JOB_CONFIG_VARIABLE)
    if config:
        try:
            metadata = json.loads(config).get("metadata") or {}
        except (ValueError, AttributeError):
            metadata = {}
        return str(metadata.get("job_submission_id") or "unknown")
    cwd = os.getcwd() if cwd is None else cwd
    return "unknown" if WORKING_DIR_MARK in os.path.join(cwd, "") else None


def local_store_path(uri: str) -> str | None:
    """The path a local store URI names, as written (``None`` for ``s3://``).

    Examples
    --------
    >>> local_store_path("file://./raymatch-store"), local_store_path("/data/store"), local_store_path("s3://b/x")
    ('./raymatch-store', '/data/store', None)
    """
    scheme, path = parse_uri(uri)
    return path if scheme == "file" else None


def check_store_in_job(store_config, *, environ: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
    """Refuse a relative local store inside a submitted Ray job (its results would vanish with the session).

    Parameters
    ----------
    store_config : raymatch.study.StoreConfig
    environ, cwd : optional
        As in :func:`submitted_job_id`.

    Raises
    ------
    ValueError
        One line: the store, where it would land, and what to use instead.
    """
    if not store_config.location.is_relative:
        return
    job = submitted_job_id(environ, cwd)
    if job is None:
        return
    here = os.getcwd() if cwd is None else cwd
    raise ValueError(f"store.uri {store_config.uri!r} is a relative path inside Ray job {job}: it would resolve "
                     f"into the job's temporary copy of the working directory ({here}), deleted with the Ray "
                     "session; use an absolute path on a filesystem every node shares (file:///…, with "
                     "shared: true on a cluster of several nodes) or an s3:// store")


def alive_nodes() -> list[str]:
    """Ids of the alive nodes of the connected Ray cluster (empty when Ray is not initialised here)."""
    import ray

    if not ray.is_initialized():
        return []
    return sorted(node["NodeID"] for node in ray.nodes() if node.get("Alive"))


def check_store_on_cluster(store_config, nodes: list[str] | None = None) -> None:
    """Refuse a local store on a cluster of several nodes unless the study declares it ``shared``.

    Parameters
    ----------
    store_config : raymatch.study.StoreConfig
    nodes : list of str, optional
        The alive nodes' ids (default: :func:`alive_nodes`). Nodes that join later (an autoscaler) are not
        seen: on such a cluster use ``s3://`` or a shared folder from the start.

    Raises
    ------
    ValueError
        One line: the store, the node count, and what to use instead.
    """
    location = store_config.location
    if not location.is_local or location.shared:
        return
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) > 1:
        raise ValueError(f"store.uri {store_config.uri!r} is a local folder but the Ray cluster has {len(nodes)} "
                         "alive nodes, each of which would write to its own disk: use an s3:// store, or a folder "
                         "every node mounts at that same path and declare it with store: {uri: file:///…, "
                         "shared: true}")
