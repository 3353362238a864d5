"""Training populations of networks: one recipe, many seeds, each checkpoint selected on a fixed holdout.

A population is one architecture trained with one :class:`TrainingSpec` from many seeds. The seed alone
decides the initialisation (``torch.manual_seed`` before :func:`~raymatch.models.build_model`) and the
order of the minibatches and augmentations (a ``numpy.random.Generator``), so on the CPU the same seed
gives a byte-identical checkpoint.

Checkpoint selection never looks at the test split. The paper's authors selected each network's checkpoint
by its accuracy on the CIFAR-10 test set, which is also the probe set they matched activations on; here a
fixed fraction of the *train* split (:func:`holdout_split`, the same images for every seed) is held out for
selection, and the test split, the probe of the matches, is only evaluated once, on the selected weights.

:func:`~raymatch.train.population.train_seed` trains one seed into the store, and the engine fans a population's
seeds out as Ray tasks (:func:`raymatch.engine.training.train_population`), writing per seed::

    <prefix>/seed<k>.safetensors   the selected weights (safetensors)
    <prefix>/seed<k>.json          the training record, written last: a seed is done iff its record exists

so a re-run trains only the seeds whose record is missing. With ``save_every = k`` the weights after every
k-th epoch are kept too (``<prefix>/seed<k>/epoch<e>.safetensors`` and ``.json``, written before the seed's
record): the seed's training trajectory. :func:`untrained_model` (``untrained=True``)
writes the initialisations instead, the null baseline: seed ``k``'s untrained model is exactly the
starting point of seed ``k``'s training.

Importing this module does not import torch; the functions that need it import it when called. Nothing here
imports Ray or the engine.
"""


from .loop import HOLDOUT_SEED, SavedEpoch, TrainedModel, holdout_split, train_model, untrained_model
from .population import (
    pending_seeds,
    population_keys,
    record_key,
    train_seed,
    trajectory_epochs,
    trajectory_keys,
)
from .spec import RECIPES, SELECTIONS, TrainingSpec, recipe

__all__ = [
    "HOLDOUT_SEED",
    "RECIPES",
    "SELECTIONS",
    "SavedEpoch",
    "TrainedModel",
    "TrainingSpec",
    "holdout_split",
    "pending_seeds",
    "population_keys",
    "recipe",
    "record_key",
    "train_model",
    "train_seed",
    "trajectory_epochs",
    "trajectory_keys",
    "untrained_model",
]
