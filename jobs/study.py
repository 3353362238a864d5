"""Entry point for `ray job submit`: run one study file on the cluster the job runs in.

    ray job submit --working-dir . -- python jobs/study.py jobs/examples/quickstart.yaml

Store credentials must reach the workers through the job's runtime_env (driver environment
variables do not), e.g. --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": "...", ...}}'.
`ray job stop` sends SIGTERM: the run commits the rows it has, records itself as cancelled and exits 130.
"""

import sys

from raymatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
