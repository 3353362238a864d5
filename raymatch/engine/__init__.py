"""The engine: plan a study from its store, run its declared stages on Ray, record the run.

Modules, in the order data flows through them:

- :mod:`.stages` — every stage declared once (how it plans, what a task runs, which executor runs it);
- :mod:`.plan` — :func:`~.plan.make_plan`: what each stage has stored and still has to do;
- :mod:`.tasks` — task units and their bodies (torch-free, so a cold Ray worker starts its first task fast);
- :mod:`.bounded` — :func:`~.bounded.run_bounded`: bounded work in flight on Ray tasks or warm actors;
- :mod:`.workers` — the warm worker actors and the extraction task body;
- :mod:`.run` — :func:`~.run.run_study`, the ``runs`` record (heartbeat, cancel) and :func:`~.run.store_status`;
- :mod:`.gc` — :func:`~.gc.plan_garbage` and :func:`~.gc.collect_garbage` (``raymatch gc``).

Import from the submodules: this package imports nothing on its own, so a Ray worker that runs a task body
from :mod:`.tasks` does not import torch or the planner.
"""
