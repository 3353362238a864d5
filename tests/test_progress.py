"""Progress of a stage off a terminal (issue 25 point 3, issue 26 point 10): a line every 10 %, but at most one every
5 s and at least one every 60 s, the last one always; on a terminal a tqdm bar. Progress counts the stage's units
(pairs for blocks of pairs), as the stage summary does. A fake clock drives it."""

from __future__ import annotations

import io
import itertools
import re

import pytest

from raymatch.engine.progress import MAX_SECONDS, MIN_SECONDS, Progress

LINE = re.compile(r"^match: (\d+)/(\d+) pairs × layers × repeats done, (\d+) s elapsed, ETA (\d+ s|unknown)$")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Log(io.StringIO):
    """stderr as a CI log sees it, each line stamped with the fake time it was written at."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock, self.times = clock, []

    def write(self, text: str) -> int:
        if text.strip():
            self.times.append(self.clock.now)
        return super().write(text)


def _run(steps: list[tuple[float, int]], total: int, ticks: list[float] = ()) -> tuple[list[tuple], list[float]]:
    """Steps ``(seconds after the previous step, units)`` and ticks at given offsets; the lines and their times."""
    clock = Clock()
    log = Log(clock)
    progress = Progress(total, "match", None, unit="pairs × layers × repeats", clock=clock, stream=log)
    start = clock.now
    pending = sorted(ticks)
    for gap, units in steps:
        target = clock.now + gap
        while pending and start + pending[0] < target:
            clock.now = start + pending.pop(0)
            progress.tick()
        clock.now = target
        progress.step(units)
    progress.close()
    lines = [LINE.match(line) for line in log.getvalue().splitlines()]
    assert all(lines), log.getvalue()
    return [tuple(int(group) for group in line.groups()[:2]) for line in lines], log.times


def test_fast_work_prints_at_most_one_line_every_5_s_and_always_the_last():
    lines, times = _run([(0.1, 1)] * 100, 100)  # 10 s of work, a unit every 0.1 s
    assert lines[0] == (10, 100) and lines[-1] == (100, 100)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[:-1])]  # the last line apart
    assert all(gap >= MIN_SECONDS for gap in gaps), times
    assert len(lines) == 3  # 10 % at 1 s, 60 % at 6 s, 100 % at 10 s


def test_slow_work_prints_every_10_percent():
    lines, _ = _run([(30.0, 1)] * 10, 10)
    assert [done for done, _ in lines] == list(range(1, 11))


def test_a_long_silence_prints_a_line_at_least_every_60_s():
    # one task of 150 s, then the rest at once: lines at 60 s and 120 s without any task finishing
    lines, times = _run([(150.0, 1), (0.1, 9)], 10, ticks=[30.0, 60.0, 90.0, 120.0, 140.0])
    assert lines[:2] == [(0, 10), (0, 10)] and [t - 1000.0 for t in times[:2]] == [MAX_SECONDS, 2 * MAX_SECONDS]
    assert lines[-1] == (10, 10)


def test_blocks_count_their_pairs():
    lines, _ = _run([(1.0, 4), (1.0, 4), (10.0, 2)], 10)  # three tasks: blocks of 4, 4 and 2 pairs
    assert lines == [(4, 10), (10, 10)]  # 80 % came within 5 s of 40 %: held back, then the last line


def test_a_closed_stderr_stops_the_lines_not_the_work():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    progress = Progress(3, "extract", None, unit="models", stream=Closed())
    for _ in range(3):
        progress.step()
    assert progress.quiet and progress.done == 3


@pytest.mark.parametrize("enabled", [None, True])
def test_a_terminal_gets_a_bar(enabled):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    progress = Progress(4, "match", enabled, unit="pairs × layers × repeats", stream=terminal)
    for _ in range(4):
        progress.step()
    progress.close()
    assert "4/4 pairs × layers × repeats" in terminal.getvalue() and "ETA" not in terminal.getvalue()
