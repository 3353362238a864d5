"""Print the ``--runtime-env-json`` of a ``ray job submit`` that carries the store's credentials.

On a cluster started with ``ray up`` the nodes have no Kubernetes Secret to read, and the driver's environment does
not reach the workers (DESIGN.md §5), so the credentials travel with the job, in its runtime_env ``env_vars``. This
reads them from your environment, so that they are typed nowhere and written to no file::

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json "$(python3 deploy/cluster/runtime_env.py)" \\
        -- python jobs/study.py jobs/examples/nightly.yaml

With an AWS profile or SSO rather than keys in the environment, export them first, e.g.
``eval "$(aws configure export-credentials --format env)"`` (short-lived credentials, which is better here: anyone
holding the cluster's Ray token can read a job's runtime_env back).
"""

from __future__ import annotations

import json
import os
import sys

REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL = ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def runtime_env(environ: dict[str, str]) -> dict:
    """The runtime_env that passes the store's AWS settings found in ``environ`` to every process of a job.

    Parameters
    ----------
    environ : dict of str to str
        Environment to read, usually ``os.environ``.

    Returns
    -------
    dict
        ``{"env_vars": {...}}`` with the required keys and those optional keys that are set and non-empty.

    Raises
    ------
    KeyError
        A required variable is missing or empty; the message names it (never a value).
    """
    missing = [name for name in REQUIRED if not environ.get(name)]
    if missing:
        raise KeyError(f"set {', '.join(missing)} in the environment first")
    names = [*REQUIRED, *(name for name in OPTIONAL if environ.get(name))]
    return {"env_vars": {name: environ[name] for name in names}}


def main() -> int:
    """Print the runtime_env as JSON, or name the missing variables on stderr and return 1."""
    try:
        print(json.dumps(runtime_env(dict(os.environ))))
    except KeyError as error:
        print(f"runtime_env.py: {error.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
