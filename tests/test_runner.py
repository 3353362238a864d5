"""Bounded task execution on a real local Ray cluster."""

from __future__ import annotations

import os
import time

import pytest

from raymatch.engine.bounded import run_bounded

# Ray actors and tasks on the session's local Ray: not in the fast tier (`pytest -m "not slow"`).
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def square_slowly(counter_dir, x):
    marker = os.path.join(counter_dir, f"running-{x}")
    open(marker, "w").close()
    running = len([n for n in os.listdir(counter_dir) if n.startswith("running-")])
    time.sleep(0.05)
    os.remove(marker)
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x, running


def test_results_in_order_errors_recorded_and_in_flight_bounded(tmp_path):
    outcomes = run_bounded(square_slowly, range(8), args=(str(tmp_path),), max_in_flight=2, progress=False)
    assert [o.item for o in outcomes] == list(range(8))
    assert [o.result[0] for o in outcomes if o.ok] == [x * x for x in range(8) if x != 3]
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].item == 3 and "three is not allowed" in failed[0].error
    assert max(o.result[1] for o in outcomes if o.ok) <= 2  # never more than two at once
    assert all(o.seconds > 0 for o in outcomes if o.ok)


def test_max_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="max_in_flight must be a positive integer"):
        run_bounded(square_slowly, [1], args=("x",), max_in_flight=0)


def test_warm_actors_are_an_interchangeable_executor(tmp_path, local_store):
    """The same items through the extraction actors' warm processes: same outcomes, work spread over them."""
    import ray

    from raymatch.engine.workers import start_actors

    actors = start_actors(2, gpus_per_actor=0, cpus_per_actor=1)
    try:
        outcomes = run_bounded(pid_of_square, range(8), args=(str(tmp_path),), max_in_flight=4, progress=False,
                               actors=actors)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert [o.item for o in outcomes] == list(range(8))
    assert [o.result[0] for o in outcomes if o.ok] == [x * x for x in range(8) if x != 3]
    (failed,) = [o for o in outcomes if not o.ok]
    assert failed.item == 3 and "three is not allowed" in failed.error
    assert len({o.result[1] for o in outcomes if o.ok}) == 2  # both actors worked


def pid_of_square(counter_dir, x):
    value, _ = square_slowly(counter_dir, x)
    return value, os.getpid()


def down_after_a_moment(x):
    """Item 0 finds the store down; the others are still running (or queued) on the actors when it does."""
    from raymatch.store import StoreError

    if x == 0:
        time.sleep(0.3)
        raise StoreError("store file:///nowhere is down")
    time.sleep(2.0)
    return x


def test_a_fatal_error_with_actor_calls_in_flight_stops_quietly(capfd):
    """Issue 15, defect 6: killing the actors after a run stopped prints no raylet line about calls in flight.

    Without cancelling them first, every call in flight is reported by Ray as "Task WorkerActor.run_task failed.
    There are 2 retries remaining … killed by `ray.kill`" on the driver's output.
    """
    import ray

    from raymatch.engine.workers import start_actors
    from raymatch.store import StoreError

    actors = start_actors(2, gpus_per_actor=0, cpus_per_actor=1)
    ray.get([actor.describe.remote() for actor in actors])  # started: the calls below run at once
    try:
        with pytest.raises(StoreError, match="is down"):
            run_bounded(down_after_a_moment, range(4), max_in_flight=4, progress=False, actors=actors,
                        fatal=(StoreError,))
    finally:
        for actor in actors:
            ray.kill(actor)
    time.sleep(2.0)  # Ray reports failed calls asynchronously
    out, err = capfd.readouterr()
    assert "ray.kill" not in out + err and "retries remaining" not in out + err, out + err
