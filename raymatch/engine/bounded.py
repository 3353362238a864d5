"""Running many small tasks on Ray with bounded work in flight.

Backpressure keeps at most ``max_in_flight`` tasks submitted, so the object store never fills with
results nobody has collected. System failures (a worker killed, a node lost) are retried by Ray up to
``max_retries`` times; application errors are not retried: they come back as the task's outcome, so a
study records them as failed rows instead of failing as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

from .progress import Progress


@dataclass
class Outcome:
    """What one task came to: its result, or the error it raised."""

    item: Any
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    cause: BaseException | None = field(default=None, repr=False, compare=False)
    node: str | None = None  # the Ray node the task ran on

    @property
    def ok(self) -> bool:
        """Whether the task returned a result."""
        return self.error is None

    def reraise(self) -> None:
        """Raise the task's own error again (its cause, not Ray's wrapper); nothing when it succeeded."""
        if self.cause is not None:
            raise self.cause
        if self.error is not None:
            raise RuntimeError(self.error)


def run_bounded(fn: Callable, items: Iterable, *, args: tuple = (), max_in_flight: int = 8, num_cpus: float = 1,
                num_gpus: float = 0, max_retries: int = 3, label: str = "tasks",
                progress: bool | None = None, actors: list | None = None,
                fatal: tuple[type[BaseException], ...] = (),
                on_outcome: Callable[[Outcome], None] | None = None,
                stop_on_failure: bool = False, task_options: dict | None = None,
                size: Callable[[Any], int] | None = None, unit: str = "tasks") -> list[Outcome]:
    """Run ``fn(*args, item)`` for every item on Ray, at most ``max_in_flight`` at once.

    Two interchangeable executors: Ray tasks (default), or method calls ``actor.run_task.remote(fn, *args,
    item)`` on ``actors`` that are already running (warm processes: no worker start-up, libraries imported;
    each actor runs its calls one after another, and the least busy one gets the next item). Actors are
    expected to restart and retry calls after a crash (``max_restarts``/``max_task_retries``); tasks are
    retried ``max_retries`` times after a system failure. Application errors are never retried.
    An item failing with an error of a ``fatal`` type (a store that cannot be reached: every other item would
    fail the same way, one retry timeout after another) cancels the items still in flight and raises it; so does
    any other error or interrupt on the driver. Calls on actors are cancelled too, so that the actors' owner
    can kill them without Ray reporting each call in flight ("… failed … killed by ray.kill").

    Returns the outcomes in the order of ``items``. ``progress`` shows a bar on an interactive
    terminal and periodic lines otherwise (default: on when stderr is a terminal; :class:`~.progress.Progress`),
    counting ``size(item)`` units of ``unit`` per item (default: one task each). ``on_outcome`` is called on
    the driver with each outcome as it arrives (the driver batches result rows into its tables there).
    With ``stop_on_failure``, the first failed item stops the submission of further items (those in flight end
    first, Ray tasks cancelled): only the outcomes of the items that ran are returned, the failure last.
    ``task_options`` are more Ray options of each Ray task (not of actor calls): e.g. its own ``runtime_env``
    (a model's code, on top of the job's) or ``scheduling_strategy``.

    A node lost in the middle: Ray runs its Ray tasks again on the nodes left (``max_retries``, no failed
    outcome until those are used up); a call on an actor of that node waits for the actor's restart, which needs
    a free slot, so on a cluster of several nodes run Ray tasks (the study engine does).
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive integer; got {max_in_flight}")
    items = list(items)
    ray_options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries, **(task_options or {})}
    executor = _Executor(fn, [ray.put(arg) for arg in args], actors, label,  # shared arguments put once
                         ray_options=ray_options)
    outcomes: list[Outcome | None] = [None] * len(items)
    pending: dict[ray.ObjectRef, tuple[int, int]] = {}
    size = size or (lambda _item: 1)
    reporter = Progress(sum(map(size, items)), label, progress, unit=unit)
    next_index, stopped = 0, False
    try:
        while (next_index < len(items) and not stopped) or pending:
            while next_index < len(items) and len(pending) < max_in_flight and not stopped:
                ref = executor.submit(items[next_index])
                pending[ref] = (next_index, executor.last_actor)
                next_index += 1
            done, _ = ray.wait(list(pending), num_returns=1, timeout=reporter.wait())
            if not done:  # nothing finished for a while: say how far the stage is
                reporter.tick()
            for ref in done:
                index, actor = pending.pop(ref)
                outcome = outcomes[index] = executor.collect(ref, actor, items[index])
                if fatal and isinstance(outcome.cause, fatal):
                    raise outcome.cause
                if on_outcome is not None:
                    on_outcome(outcome)
                if stop_on_failure and not outcome.ok and not stopped:
                    stopped = True  # no progress line for it: the caller reports the failure
                    executor.cancel(pending)
                    continue
                reporter.step(size(items[index]))
    except BaseException:  # a fatal outcome, an interrupt, the run cancelled (SIGINT/SIGTERM): nothing more runs
        executor.cancel(pending, calls_on_actors=True)
        reporter.close()
        raise
    reporter.close()
    if stopped:
        ran = [outcome for outcome in outcomes if outcome is not None]
        return [outcome for outcome in ran if outcome.ok] + [outcome for outcome in ran if not outcome.ok]
    return outcomes  # type: ignore[return-value]


class _Executor:
    """Where :func:`run_bounded` submits: Ray tasks, or the least busy of running actors."""

    def __init__(self, fn: Callable, shared: list, actors: list | None, label: str, ray_options: dict):
        self.fn, self.shared, self.actors, self.label = fn, shared, actors, label
        self.busy = dict.fromkeys(range(len(actors)), 0) if actors else {}
        self.last_actor = -1
        if not actors:
            self.remote = ray.remote(retry_exceptions=False, **ray_options)(timed).options(
                name=getattr(fn, "__name__", label))

    def submit(self, item: Any) -> ray.ObjectRef:
        """Submit one item; :attr:`last_actor` is the actor it went to (-1 for a Ray task)."""
        if not self.actors:
            return self.remote.remote(self.fn, *self.shared, item)
        if not self.busy:
            raise RuntimeError(f"{self.label}: every worker actor died (out of restarts); rerun to finish")
        self.last_actor = min(self.busy, key=self.busy.get)
        self.busy[self.last_actor] += 1
        return self.actors[self.last_actor].run_task.remote(self.fn, *self.shared, item)

    def collect(self, ref: ray.ObjectRef, actor: int, item: Any) -> Outcome:
        """The outcome of a finished call; an actor out of restarts gets no more calls."""
        if actor in self.busy:
            self.busy[actor] -= 1
        outcome = _collect(ref, item)
        if isinstance(outcome.cause, ray.exceptions.RayActorError):
            self.busy.pop(actor, None)
        return outcome

    def cancel(self, pending, *, calls_on_actors: bool = False) -> None:
        """Cancel Ray tasks still in flight (calls on actors end with the actors, which their owner stops).

        With ``calls_on_actors``, calls on actors are cancelled too (the run stops): a cancelled call is never
        retried, so when its owner then kills the actors Ray has nothing to report, where an uncancelled call
        would print "Task WorkerActor.run_task failed … retries remaining … killed by ray.kill".
        """
        if not self.actors or calls_on_actors:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished, or its worker gone: nothing to cancel
                    continue


def _collect(ref: ray.ObjectRef, item: Any) -> Outcome:
    """The outcome of one finished call: its result, or its error (for a task's own error, the cause).

    Every Ray error becomes a failed outcome: a task's own exception, an actor out of restarts, a worker lost
    after its retries, a task killed for memory.
    """
    try:
        result, seconds, node = ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if getattr(error, "cause", None) is not None else error
        return Outcome(item, None, f"{type(cause).__name__}: {cause}", cause=cause)
    except ray.exceptions.RayError as error:
        return Outcome(item, None, f"{type(error).__name__}: {error}", cause=error)
    return Outcome(item, result, None, seconds, node=node)


def timed(fn: Callable, *args) -> tuple[Any, float, str]:
    """``fn(*args)``, the seconds it took and the id of the Ray node it ran on (every task and actor call)."""
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started, ray.get_runtime_context().get_node_id()
