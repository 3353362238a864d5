"""What every benchmark shares: the median of timed runs and the machine named in each table's header."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy

from .. import __version__

__all__ = ["PAPER_EPS", "machine", "median_time", "text_table"]

#: The paper's ε grid.
PAPER_EPS = (0.15, 0.2, 0.25, 0.3, 0.5)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Median wall time of ``repeats`` calls (after one untimed warm-up when repeats > 1)."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


def machine() -> str:
    """The processor and core count this benchmark ran on, for the tables' headers."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, raymatch {__version__}")


def text_table(header, lines, out=None) -> None:
    """Print ``lines`` (tuples of strings) under ``header`` as aligned columns separated by ``|``."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)
