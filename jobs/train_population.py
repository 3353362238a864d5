"""Entry point for `ray job submit`: train the population of a study file (its seeds and null baseline).

    ray job submit --working-dir . -- python jobs/train_population.py jobs/examples/quickstart.yaml

Each seed is one Ray task (one GPU each when the study's resources.gpus_per_actor is 1 and the cluster has
GPUs); checkpoints and their records (held-out and test accuracy) land in the study's store, where the study
finds them by its training spec. `python jobs/study.py` on the same file trains what is missing anyway.
"""

import sys

from raymatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
