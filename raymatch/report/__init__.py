"""``raymatch report``: figures and a short summary of one study's results tables.

:func:`write_report` reads a store's ``matches``, ``simple_matches`` and ``cka`` views (see
:mod:`raymatch.results`) and the study's record (:func:`raymatch.store.layout.study_record_key`, for the layers in
network order), and writes into a folder:

- ``similarity.png`` — the paper's figure: maximum-match similarity per layer, one panel per ε (mean over pairs,
  95 % band from a bootstrap over models), the nulls dashed and dotted in the same colour, over the trained line;
- ``max_epsilon.png`` — each pair's maximal ε per layer, trained beside untrained, with the chance ratio
  √(1 − k/d) of each layer marked;
- ``simple_match_sizes.png`` — sizes |X| + |Y| of the simple matches per layer;
- ``cka.png`` — linear CKA per layer beside the match similarity at each layer's report ε;
- ``repeats.png`` — spread of the similarity over row-sample repeats (conv layers under the paper's protocol), at
  the same ε;
- ``summary.md`` — counts, the layer × ε similarity table with the null beside it, maximal ε and CKA per layer,
  which figures were written or skipped and why, and caveats;
- ``index.html`` (``html=True``, ``--html``) — one self-contained, offline page with an exact ε slider
  (:mod:`.html`, its data :mod:`.html_data`, its figures :mod:`.html_figures`).

The report's ε (of ``cka.png``, ``repeats.png``, ``universality.png`` and the summary's tables at ε) is each
layer's own: the median over its trained pairs of the smallest ε at which half the live neurons of each side are
matched (``eps_for_share(0.5)``, :data:`~raymatch.report.context.REPORT_SHARE`), rounded up to 3 decimals; ``--eps``
sets one for every layer. An ε not in the study's ε grid is read from ``matches_at(eps)``, the stored ε-curves at
that ε (nothing is recomputed); one asked for gets an extra column of the similarity table.
Only ``"ok"`` rows are drawn; failed curves are counted in the summary. A figure without data is skipped, and the
summary says why. Figures are built with matplotlib's object API on the Agg canvas (no pyplot, so no global
figure registry grows); :class:`Report` keeps them, and the data they were drawn from, for inspection.

Modules: :mod:`.context` (what the figures and summary share), :mod:`.similarity_table` (the similarity table
and its text forms), :mod:`.figures` (the figures above; ``cka.png`` and ``repeats.png`` in
:mod:`.figures_at_eps`), :mod:`.science` (``eps_curve.png``,
``universality.png``), :mod:`.beyond` (``trajectory.png``, ``cross_layers.png``), :mod:`.summary` (``summary.md``),
:mod:`.command` (loading from the store, :func:`write_report` and the command line).
"""

from .command import Report, add_arguments, command, write_report
from .context import DEFAULT_EPS, TRAINED, UNTRAINED
from .figures import FIGURE_NAMES, FigureResult, draw_figures
from .similarity_table import format_similarity_table, similarity_table
from .summary import SUMMARY_NAME

__all__ = [
    "DEFAULT_EPS",
    "FIGURE_NAMES",
    "SUMMARY_NAME",
    "TRAINED",
    "UNTRAINED",
    "FigureResult",
    "Report",
    "add_arguments",
    "command",
    "draw_figures",
    "format_similarity_table",
    "similarity_table",
    "write_report",
]
