"""Running many small tasks on Ray with bounded work in flight.

Backpressure keeps at most ``max_in_flight`` tasks submitted, so the object store never fills with
results nobody has collected. System failures (a worker killed, a node lost) are retried by Ray up to
``max_retries`` times; application errors are not retried: they come back as the task's outcome, so a
study records them as failed rows instead of failing as a whole.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm


@dataclass
class Outcome:
    """What one task came to: its result, or the error it raised."""

    item: Any
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    cause: BaseException | None = field(default=None, repr=False, compare=False)

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
                fatal: tuple[type[BaseException], ...] = ()) -> list[Outcome]:
    """Run ``fn(*args, item)`` for every item on Ray, at most ``max_in_flight`` at once.

    Two interchangeable executors: Ray tasks (default), or method calls ``actor.run_task.remote(fn, *args,
    item)`` on ``actors`` that are already running (warm processes: no worker start-up, libraries imported;
    each actor runs its calls one after another, and the least busy one gets the next item). Actors are
    expected to restart and retry calls after a crash (``max_restarts``/``max_task_retries``); tasks are
    retried ``max_retries`` times after a system failure. Application errors are never retried.
    An item failing with an error of a ``fatal`` type (a store that cannot be reached: every other item would
    fail the same way, one retry timeout after another) cancels the items still in flight and raises it.

    Returns the outcomes in the order of ``items``. ``progress`` shows a bar on an interactive
    terminal and periodic lines otherwise (default: on when stderr is a terminal).
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive integer; got {max_in_flight}")
    items = list(items)
    shared = [ray.put(arg) for arg in args]  # put large shared arguments (a store) once
    busy = dict.fromkeys(range(len(actors)), 0) if actors else {}
    if actors:
        def submit(item) -> tuple[ray.ObjectRef, int]:
            if not busy:
                raise RuntimeError(f"{label}: every worker actor died (out of restarts); rerun to finish")
            chosen = min(busy, key=busy.get)
            busy[chosen] += 1
            return actors[chosen].run_task.remote(fn, *shared, item), chosen
    else:
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                            retry_exceptions=False)(timed).options(name=getattr(fn, "__name__", label))

        def submit(item) -> tuple[ray.ObjectRef, int]:
            return remote.remote(fn, *shared, item), -1
    outcomes: list[Outcome | None] = [None] * len(items)
    pending: dict[ray.ObjectRef, tuple[int, int]] = {}
    reporter = Progress(len(items), label, progress)
    next_index = 0
    while next_index < len(items) or pending:
        while next_index < len(items) and len(pending) < max_in_flight:
            ref, actor = submit(items[next_index])
            pending[ref] = (next_index, actor)
            next_index += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index, actor = pending.pop(ref)
            if actor in busy:
                busy[actor] -= 1
            outcome = outcomes[index] = _collect(ref, items[index])
            if isinstance(outcome.cause, ray.exceptions.RayActorError):  # out of restarts: no more calls to it
                busy.pop(actor, None)
            if fatal and isinstance(outcome.cause, fatal):
                if not actors:  # calls on actors end with the actors, which their owner stops
                    for other in pending:
                        ray.cancel(other)
                reporter.close()
                raise outcome.cause
            reporter.step()
    reporter.close()
    return outcomes  # type: ignore[return-value]


def _collect(ref: ray.ObjectRef, item: Any) -> Outcome:
    """The outcome of one finished call: its result, or its error (for a task's own error, the cause).

    Every Ray error becomes a failed outcome: a task's own exception, an actor out of restarts, a worker lost
    after its retries, a task killed for memory.
    """
    try:
        result, seconds = ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if getattr(error, "cause", None) is not None else error
        return Outcome(item, None, f"{type(cause).__name__}: {cause}", cause=cause)
    except ray.exceptions.RayError as error:
        return Outcome(item, None, f"{type(error).__name__}: {error}", cause=error)
    return Outcome(item, result, None, seconds)


def timed(fn: Callable, *args) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took (the body of every task and actor call)."""
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


class Progress:
    """done / total / ETA on the driver: a tqdm bar on a terminal, a plain line every 10 % otherwise."""

    def __init__(self, total: int, label: str, enabled: bool | None):
        self.total, self.label, self.done = total, label, 0
        self.started = time.monotonic()
        interactive = sys.stderr.isatty() if enabled is None else enabled
        self.quiet = enabled is False or not total
        show_bar = interactive and not self.quiet
        self.bar = tqdm(total=total, desc=label, unit="task", file=sys.stderr) if show_bar else None
        self.next_report = 0.1

    def step(self) -> None:
        """Count one finished task (a line every 10 % when there is no bar)."""
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif not self.quiet and (self.done / self.total >= self.next_report or self.done == self.total):
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            print(f"{self.label}: {self.done}/{self.total} done, {elapsed:.0f} s elapsed, ETA {eta:.0f} s",
                  file=sys.stderr, flush=True)
            self.next_report += 0.1

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()
