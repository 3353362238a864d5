"""The engine: plan a study from its store, run its declared stages on Ray, record the run.

Modules, in the order data flows through them:

- :mod:`.stages` — one module per stage (train, extract, factor, match, simple, cross), each declaring how it
  plans, what it reads and writes, its task body and its executor's role; :data:`~.stages.STAGES` lists them in
  run order;
- :mod:`.plan` — what a plan holds (:class:`~.plan.Plan`, :class:`~.plan.StagePlan`, :class:`~.plan.ModelGroup`);
  :mod:`.planning` — :func:`~.planning.make_plan`, the model groups; :mod:`.context` — what the stage planners
  share (:class:`~.context.PlanContext`); :mod:`.pairlist` — pairs and stored pairs as arrays
  (:class:`~.pairlist.PairList`, :class:`~.pairlist.StoredPairs`), so that planning 10⁶ pairs holds no tuple each;
- :mod:`.tasks` — the pair tasks' units and bodies (torch-free, so a cold Ray worker starts its first task fast);
  :mod:`.curves` — the fields of a block of pairs from the batched kernel;
- :mod:`.executors` — where tasks run (warm local actors, Ray tasks, GPU extraction actors, GPU actors of the pair
  stages, training tasks), picked
  once per run by :func:`~.executors.choose_executors`; :mod:`.bounded` — :func:`~.bounded.run_bounded`, bounded
  work in flight; :mod:`.workers` — the warm worker actors and extraction's fan-out; :mod:`.training` —
  training's fan-out (:func:`~.training.train_population`);
- :mod:`.run` — :func:`~.run.run_study` and the stage loop; :mod:`.record` — the ``runs`` record and heartbeat;
  :mod:`.cancel` — :class:`~.cancel.RunCancelled` on SIGINT/SIGTERM; :mod:`.model_rows` — the ``models`` table;
- :mod:`.status` — :func:`~.status.store_status` (``raymatch status``); :mod:`.gc` — :func:`~.gc.plan_garbage` and
  :func:`~.gc.collect_garbage` (``raymatch gc``); :mod:`.cluster` — checks of the store against the cluster.

Import from the submodules: this package imports nothing on its own, so a Ray worker that runs a task body
from :mod:`.tasks` does not import torch or the planner.
"""
