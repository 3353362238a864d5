"""The fixed figures of the interactive report, as plotly figure dicts (the page draws and updates them).

Each function returns a ``plotly.graph_objects.Figure``. Vertical lines named ``"slider"`` follow the page's ε
slider (the page moves them); everything else is fixed. Nothing here reads a store.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Colours of the populations (the PNG report's), then plotly's default cycle.
COLOURS = {"trained": "#1f77b4", "untrained": "#7f7f7f", "permuted": "#d62728", "trajectory": "#2ca02c"}
_CYCLE = ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
DASHES = {"trained": "solid", "untrained": "dash", "permuted": "dot"}
FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 12}


def colour(population: str, index: int) -> str:
    """The colour of a population (fixed for the known ones)."""
    return COLOURS.get(population, _CYCLE[index % len(_CYCLE)])


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _layout(figure, *, height: int, title: str) -> None:
    figure.update_layout(height=height, title={"text": title, "x": 0.01, "font": {"size": 14}}, font=FONT,
                         margin={"l": 60, "r": 20, "t": 70, "b": 50}, template="plotly_white",
                         hoverlabel={"font": FONT})


def _slider_line(figure, eps: float, row: int | None = None, col: int | None = None) -> None:
    figure.add_vline(x=eps, line={"color": "#2ca02c", "width": 2}, name="slider", row=row, col=col)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def layer_eps_heatmap(means: dict[str, dict[str, np.ndarray]], layers: list[str], populations: list[str],
                      grid: np.ndarray, eps: float):
    """Layer × ε mean similarity, one panel per population (the nulls beside the trained), shared colour scale.

    Parameters
    ----------
    means : dict
        ``means[population][layer]``: mean over pairs at each slider ε, shape ``(n_steps,)``.
    layers, populations : list of str
        Rows (network order) and panels.
    grid : numpy.ndarray, shape (n_steps,)
    eps : float
        Where the slider starts.
    """
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(populations), shared_yaxes=True, horizontal_spacing=0.03,
                           subplot_titles=populations)
    for column, population in enumerate(populations, start=1):
        z = np.array([means[population].get(layer, np.full(grid.size, np.nan)) for layer in layers])
        figure.add_heatmap(z=np.round(z, 4), x=grid, y=layers, coloraxis="coloraxis", row=1, col=column,
                           name=population,
                           hovertemplate=f"{population}<br>layer %{{y}}<br>ε %{{x:.3f}}<br>mean similarity "
                                         "%{z:.3f}<extra></extra>")
        _slider_line(figure, eps, 1, column)
        figure.update_xaxes(title_text="ε", range=[0, 1], row=1, col=column)
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_layout(coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                                    "colorbar": {"title": {"text": "similarity"}, "thickness": 14}})
    _layout(figure, height=max(260, 60 + 34 * len(layers) + 80),
            title="Mean maximum-match similarity over pairs, per layer and ε (green: the slider's ε)")
    return figure


def eps_curves(means: dict, bands: dict, chance: dict, layers: list[str], populations: list[str], grid: np.ndarray,
               eps: float, caption: str):
    """Per layer, each population's mean similarity at every slider ε (steps) with its model-bootstrap band.

    ``means[population][layer]`` and ``bands[population][layer] = (low, high)`` have shape ``(n_steps,)``;
    ``chance[layer]`` is the layer's chance ratio √(1 − k/d) (a dotted line).
    """
    from plotly.subplots import make_subplots

    rows, cols = _grid(len(layers))
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=layers, shared_yaxes=True,
                           horizontal_spacing=0.05, vertical_spacing=0.16 if rows > 1 else 0.1)
    for index, layer in enumerate(layers):
        row, col = index // cols + 1, index % cols + 1
        for number, population in enumerate(populations):
            if layer not in means[population]:
                continue
            shade = colour(population, number)
            low, high = bands[population][layer]
            if np.isfinite(low).all():
                figure.add_scatter(x=grid, y=np.round(high, 4), mode="lines", line={"width": 0, "shape": "hv"},
                                   showlegend=False, hoverinfo="skip", legendgroup=population, row=row, col=col)
                figure.add_scatter(x=grid, y=np.round(low, 4), mode="lines", line={"width": 0, "shape": "hv"},
                                   fill="tonexty", fillcolor=_rgba(shade, 0.18), showlegend=False,
                                   hoverinfo="skip", legendgroup=population, row=row, col=col)
            figure.add_scatter(x=grid, y=np.round(means[population][layer], 4), mode="lines",
                               line={"color": shade, "width": 2, "shape": "hv", "dash": DASHES.get(population,
                                                                                                  "dashdot")},
                               name=population, legendgroup=population, showlegend=index == 0,
                               hovertemplate=f"{population} {layer}<br>ε %{{x:.3f}}: %{{y:.3f}}<extra></extra>",
                               row=row, col=col)
        figure.add_vline(x=chance[layer], line={"color": "black", "width": 1, "dash": "dot"}, row=row, col=col)
        _slider_line(figure, eps, row, col)
    figure.update_xaxes(range=[0, 1], title_text="ε")
    figure.update_yaxes(range=[0, 1.02])
    figure.update_yaxes(title_text="similarity", col=1)
    _layout(figure, height=120 + 280 * rows, title=caption)
    return figure


def universality_bars(data: pd.DataFrame, layers: list[str], populations: list[str], layer_eps: dict[str, float],
                      eps: float | None = None):
    """Per layer at its ε, the neurons (every model and repeat) matched in each possible share j/k of k others.

    ``layer_eps``: each layer's ε; ``eps``: the one ε of every layer, when the report was asked for one.
    """
    from plotly.subplots import make_subplots

    from .science import possible_shares, share_label

    rows, cols = _grid(len(layers))
    titles = []
    for layer in layers:
        parts = []
        for population in populations:
            shares = data.loc[(data["layer"] == layer) & (data["population"] == population), "share"]
            if len(shares):
                parts.append(f"{population} {int((shares == 1).sum())}/{len(shares)}")
        at = "" if eps is not None or layer not in layer_eps else f" at ε = {layer_eps[layer]:g}"
        titles.append(f"{layer}{at}<br><span style='font-size:11px'>neurons shared by every other model:<br>"
                      f"{' · '.join(parts)}</span>")
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_yaxes=True,
                           horizontal_spacing=0.06, vertical_spacing=0.28 if rows > 1 else 0.1)
    for index, layer in enumerate(layers):
        row, col = index // cols + 1, index % cols + 1
        in_layer = data.loc[data["layer"] == layer]
        positions = possible_shares(in_layer["others"])
        gap = np.diff(positions).min() if positions.size > 1 else 1.0
        width = min(gap, 0.25) * 0.85 / max(len(populations), 1)
        for number, population in enumerate(populations):
            shares = in_layer.loc[in_layer["population"] == population, "share"].to_numpy()
            if not shares.size:
                continue
            counts = np.array([np.sum(np.isclose(shares, value, rtol=0, atol=1e-9)) for value in positions])
            offset = (number - (len(populations) - 1) / 2) * width
            figure.add_bar(x=positions + offset, y=np.round(counts / shares.size, 4), width=width, name=population,
                           marker_color=colour(population, number), legendgroup=population, showlegend=index == 0,
                           customdata=positions,
                           hovertemplate=f"{population}<br>share %{{customdata:.3f}}: "
                                         "%{y:.3f} of neurons<extra></extra>", row=row, col=col)
        half = width * len(populations) / 2 + 0.02
        ks = sorted(set(map(int, in_layer["others"])))
        ticks = {"tickvals": positions, "ticktext": [share_label(value, ks) for value in positions]} \
            if positions.size <= 11 else {"dtick": 0.1}
        figure.update_xaxes(range=[positions[0] - half, positions[-1] + half], row=row, col=col, **ticks)
    figure.update_xaxes(title_text="share of the other models")
    figure.update_yaxes(title_text="fraction of neurons", col=1)
    at = f"ε = {eps:g}" if eps is not None else "each layer's ε"
    _layout(figure, height=140 + 300 * rows,
            title=f"Neuron universality at {at}: in how many of its model's pairs a neuron is matched")
    figure.update_layout(margin={"t": 125}, title={"y": 0.985, "yanchor": "top"})
    return figure


def cross_layer_heatmaps(data: pd.DataFrame, layers: list[str]):
    """One heatmap per ε of the grid: mean similarity of layer i of model a with layer j of model b."""
    from plotly.subplots import make_subplots

    grid = sorted(data["eps"].unique())
    figure = make_subplots(rows=1, cols=len(grid), subplot_titles=[f"ε = {e:g}" for e in grid], shared_yaxes=True,
                           horizontal_spacing=0.03)
    for column, eps in enumerate(grid, start=1):
        matrix = (data.loc[data["eps"] == eps]
                  .pivot_table(index="layer_a", columns="layer_b", values="similarity", aggfunc="mean")
                  .reindex(index=layers, columns=layers)).to_numpy(dtype=float)
        figure.add_heatmap(z=np.round(matrix, 4), x=layers, y=layers, coloraxis="coloraxis", row=1, col=column,
                           text=np.where(np.isfinite(matrix), np.char.mod("%.2f", np.nan_to_num(matrix)), ""),
                           texttemplate="%{text}",
                           hovertemplate="layer of a %{y}<br>layer of b %{x}<br>mean %{z:.3f}<extra></extra>")
        figure.update_xaxes(title_text="layer of model b", type="category", row=1, col=column)
    figure.update_yaxes(autorange="reversed", type="category", title_text="layer of model a", col=1)
    figure.update_layout(coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                                    "colorbar": {"title": {"text": "similarity"}, "thickness": 14}})
    _layout(figure, height=160 + 40 * len(layers) + 60, title="Mean similarity across layers")
    return figure


def trajectory_lines(data: pd.DataFrame, layers: list[str], against: str):
    """Similarity of each saved epoch to ``against``, per layer (mean over seeds, min–max band), one panel per ε."""
    from plotly.subplots import make_subplots

    grid = sorted(data["eps"].unique())
    figure = make_subplots(rows=1, cols=len(grid), subplot_titles=[f"ε = {e:g}" for e in grid], shared_yaxes=True,
                           horizontal_spacing=0.03)
    summary = data.groupby(["eps", "layer", "epoch"])["similarity"].agg(["mean", "min", "max"]).reset_index()
    for column, eps in enumerate(grid, start=1):
        for index, layer in enumerate(layers):
            rows = summary.loc[(summary["eps"] == eps) & (summary["layer"] == layer)].sort_values("epoch")
            if rows.empty:
                continue
            shade = _CYCLE[index % len(_CYCLE)] if index else COLOURS["trained"]
            figure.add_scatter(x=rows["epoch"], y=rows["max"], mode="lines", line={"width": 0}, showlegend=False,
                               hoverinfo="skip", row=1, col=column)
            figure.add_scatter(x=rows["epoch"], y=rows["min"], mode="lines", line={"width": 0}, fill="tonexty",
                               fillcolor=_rgba(shade, 0.15), showlegend=False, hoverinfo="skip", row=1, col=column)
            figure.add_scatter(x=rows["epoch"], y=rows["mean"], mode="lines+markers", line={"color": shade},
                               name=layer, legendgroup=layer, showlegend=column == 1, row=1, col=column,
                               hovertemplate=f"{layer}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>")
        figure.update_xaxes(title_text="epoch", row=1, col=column)
    figure.update_yaxes(range=[0, 1.02])
    figure.update_yaxes(title_text=f"similarity to {against}", col=1)
    _layout(figure, height=420, title=f"Similarity along training, to {against} (mean over seeds, band min–max)")
    return figure


__all__ = ["COLOURS", "colour", "cross_layer_heatmaps", "eps_curves", "layer_eps_heatmap", "trajectory_lines",
           "universality_bars"]
