"""How far a stage is, on the driver's stderr: a tqdm bar on a terminal, a plain line now and then elsewhere.

Off a terminal (CI logs, ``ray job submit`` logs, a pipe) a line is printed at every 10 % of the work, but at most
one every :data:`MIN_SECONDS` (a milestone reached sooner waits for the next line) and at least one every
:data:`MAX_SECONDS` (a long task prints nothing for minutes otherwise): ``match: 24/54 pairs × layers × repeats
done, 12 s elapsed, ETA 15 s``. The last line, at 100 %, is always printed. Progress counts the stage's own units
(:attr:`Stage.unit <raymatch.engine.stages.Stage.unit>`: pairs for a block of pairs), the units of the stage
summary.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

__all__ = ["MAX_SECONDS", "MIN_SECONDS", "Progress"]

#: Off a terminal, no two progress lines of a stage closer than this (seconds), the last one apart.
MIN_SECONDS = 5.0
#: Off a terminal, a progress line at least this often (seconds) while a stage runs.
MAX_SECONDS = 60.0


class Progress:
    """done / total / ETA of one stage: a tqdm bar on a terminal, a plain line now and then otherwise.

    Parameters
    ----------
    total : int
        Units of work (tasks, or the stage's units when each task counts for several).
    label : str
        The stage's name, first on each line.
    enabled : bool, optional
        ``True``: a bar; ``False``: nothing; ``None`` (default): a bar when ``stream`` is a terminal, lines
        otherwise.
    unit : str, default 'tasks'
        What ``total`` counts.
    clock : callable, default time.monotonic
        Seconds (tests pass a fake clock).
    stream : file, optional
        Where to write (default: ``sys.stderr`` when each line is written).
    """

    def __init__(self, total: int, label: str, enabled: bool | None, *, unit: str = "tasks",
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.clock, self._stream = clock, stream
        self.started = self.last_line = clock()
        self.printed_any = False
        self.next_share = 0.1  # the next 10 % milestone
        interactive = self.stream.isatty() if enabled is None else enabled
        self.quiet = enabled is False or not total
        self.bar = None
        if interactive and not self.quiet:
            self.bar = tqdm(total=total, desc=label, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + unit
                                       + " [{elapsed}<{remaining}]")

    @property
    def stream(self) -> TextIO:
        """Where the lines go."""
        return self._stream if self._stream is not None else sys.stderr

    def step(self, n: int = 1) -> None:
        """Count ``n`` units done (one finished task), and print a line when one is due."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.quiet:
            return
        if self.done >= self.total:
            self._line()
            return
        self.tick()

    def tick(self) -> None:
        """Print a line when one is due without a task finishing (a milestone held back, or a long silence)."""
        if self.bar is not None or self.quiet or self.done >= self.total:
            return
        now = self.clock()
        milestone = self.done / self.total >= self.next_share
        since = now - self.last_line
        if (milestone and (since >= MIN_SECONDS or not self.printed_any)) or since >= MAX_SECONDS:
            self._line(now)

    def wait(self) -> float | None:
        """Seconds until a line falls due if nothing finishes (for a wait with a timeout); None when none will."""
        if self.bar is not None or self.quiet or self.done >= self.total:
            return None
        return max(0.0, self.last_line + MAX_SECONDS - self.clock())

    def _line(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        elapsed = now - self.started
        eta = f"{elapsed / self.done * (self.total - self.done):.0f} s" if self.done else "unknown"
        try:
            print(f"{self.label}: {self.done}/{self.total} {self.unit} done, {elapsed:.0f} s elapsed, ETA {eta}",
                  file=self.stream, flush=True)
        except OSError:  # nobody reads stderr any more (a closed pipe): the work goes on without its lines
            self.quiet = True
        self.printed_any, self.last_line = True, now
        self.next_share = (math.floor(self.done / self.total * 10 + 1e-9) + 1) / 10

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()
