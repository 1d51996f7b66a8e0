"""Charts for the reports people read: plain data in, PNG bytes out, drawn by matplotlib's Agg renderer.

Four shapes cover the sandbox's reports (the monthly regulator report now, the city simulation's later):

- :func:`bar_chart`: one value per label (volume by asset, invoices by status);
- :func:`stacked_bar_chart`: several named series per label, stacked (payments per day by outcome);
- :func:`histogram` over raw values, or :func:`binned_histogram` over counts already binned (so a report
  over millions of payments can bin while it streams them, with :func:`bin_counts` or its own loop);
- :func:`line_chart`: named series over numbers, dates or datetimes (a time series).

Every helper takes a title and axis labels, a ``value_format`` for the value axis (and bar labels),
``integer_values`` for counts (no tick at half a payment), and returns the PNG; :func:`png_data_uri`
turns it into a ``data:`` URI for a self-contained HTML page. An empty chart (no labels, no values) is
still a valid image that says ``empty_text``, so a report's layout does not change in a quiet month.

No pyplot: each chart is its own ``Figure`` on its own Agg canvas, so nothing is global and charts can be
drawn from worker threads. PNGs carry no software or date metadata: the same data gives the same bytes.
Amounts arrive in minor units (tiyn) and are only divided for display (:func:`tiyn_as_kzt`); no chart
computes money.
"""

from __future__ import annotations

import base64
import io
import itertools
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = [
    "PALETTE",
    "ChartSize",
    "Series",
    "ValueFormat",
    "bar_chart",
    "bin_counts",
    "binned_histogram",
    "histogram",
    "line_chart",
    "plain_number",
    "png_data_uri",
    "seconds_text",
    "stacked_bar_chart",
    "tiyn_as_kzt",
]

ValueFormat = Callable[[float], str]
XValue = float | date | datetime

# Okabe & Ito's colour-blind-safe palette (black left out: it is the text colour).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#999999")
_TEXT = "#222222"
_GRID = "#DDDDDD"


@dataclass(frozen=True, slots=True)
class Series:
    """One named line or bar segment: ``values[i]`` belongs to the chart's ``i``-th label or x value."""

    name: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class ChartSize:
    width_in: float = 8.0
    height_in: float = 3.6
    dpi: int = 110


DEFAULT_SIZE = ChartSize()


def plain_number(value: float) -> str:
    """``1234567`` → ``1,234,567``; fractions keep up to two places (axis ticks of counts, seconds)."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def tiyn_as_kzt(value: float) -> str:
    """An axis or bar label for an amount in tiyn, shown in whole tenge: ``1250000`` → ``12,500``."""
    return f"{value / 100:,.0f}"


def seconds_text(value: float) -> str:
    """Durations for people: ``42 s``, ``3.5 min``, ``2.1 h``."""
    if abs(value) < 120:
        return f"{value:,.0f} s"
    if abs(value) < 7200:
        return f"{value / 60:,.1f} min"
    return f"{value / 3600:,.1f} h"


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,…``: the image inside the page, readable offline."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- the four shapes ---------------------------------------------------------------------------------------


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    value_format: ValueFormat = plain_number,
    horizontal: bool = False,
    annotate: bool = True,
    integer_values: bool = False,
    color: str = PALETTE[0],
    empty_text: str = "no data",
    size: ChartSize = DEFAULT_SIZE,
) -> bytes:
    """One bar per label; ``horizontal`` for long labels. Bars are labelled with their values."""
    _same_length(labels, values, "values")
    figure, axes = _figure(title, size)
    if not labels:
        return _empty(figure, axes, empty_text)
    positions = list(range(len(labels)))
    if horizontal:
        bars = axes.barh(positions, list(values), color=color)
        axes.set_yticks(positions, list(labels))
        axes.invert_yaxis()  # the first label on top, as a table reads
        _value_axis(axes.xaxis, value_format, integer_values)
        axes.set_xlabel(ylabel)
        axes.set_ylabel(xlabel)
        axes.grid(axis="x", color=_GRID)
    else:
        bars = axes.bar(positions, list(values), color=color)
        axes.set_xticks(positions, list(labels))
        _rotate_if_crowded(axes, labels)
        _value_axis(axes.yaxis, value_format, integer_values)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(axis="y", color=_GRID)
    if annotate:
        axes.bar_label(bars, labels=[value_format(v) for v in values], fontsize=8, padding=2, color=_TEXT)
        axes.margins(x=0.15 if horizontal else 0.02, y=0.02 if horizontal else 0.12)
    return _png(figure)


def stacked_bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    value_format: ValueFormat = plain_number,
    integer_values: bool = False,
    empty_text: str = "no data",
    size: ChartSize = DEFAULT_SIZE,
) -> bytes:
    """One bar per label, its segments the series in order (bottom first), with a legend."""
    for one in series:
        _same_length(labels, one.values, f"series {one.name!r}")
    figure, axes = _figure(title, size)
    if not labels or not series:
        return _empty(figure, axes, empty_text)
    positions = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    for index, one in enumerate(series):
        axes.bar(positions, list(one.values), bottom=bottom, label=one.name, color=_colour(index))
        bottom = [b + v for b, v in zip(bottom, one.values, strict=True)]
    axes.set_xticks(positions, list(labels))
    _rotate_if_crowded(axes, labels)
    _value_axis(axes.yaxis, value_format, integer_values)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", color=_GRID)
    axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """How many values fall in each bin ``[edges[i], edges[i+1])``; the last bin includes its right edge.

    Values outside ``[edges[0], edges[-1]]`` are not counted. ``len(edges) - 1`` counts.
    """
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("edges must be at least two strictly increasing numbers")
    counts = [0] * (len(edges) - 1)
    for value in values:
        if value == edges[-1]:
            counts[-1] += 1
        elif edges[0] <= value < edges[-1]:
            counts[bisect_right(edges, value) - 1] += 1
    return counts


def histogram(
    values: Sequence[float],
    *,
    bins: int | Sequence[float] = 20,
    title: str,
    xlabel: str = "",
    ylabel: str = "count",
    value_format: ValueFormat = plain_number,
    empty_text: str = "no data",
    size: ChartSize = DEFAULT_SIZE,
) -> bytes:
    """The distribution of raw values: ``bins`` equal-width bins over their range, or the edges given.

    ``value_format`` formats the x axis (the values' unit, e.g. :func:`tiyn_as_kzt`).
    """
    if not values:
        return binned_histogram([], [], title=title, empty_text=empty_text, size=size)
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError("bins must be at least 1")
        low, high = min(values), max(values)
        if low == high:
            low, high = low - 0.5, high + 0.5
        width = (high - low) / bins
        edges: Sequence[float] = [low + width * n for n in range(bins)] + [high]
    else:
        edges = bins
    return binned_histogram(
        edges,
        bin_counts(values, edges),
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        value_format=value_format,
        empty_text=empty_text,
        size=size,
    )


def binned_histogram(
    edges: Sequence[float],
    counts: Sequence[int],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "count",
    value_format: ValueFormat = plain_number,
    empty_text: str = "no data",
    size: ChartSize = DEFAULT_SIZE,
) -> bytes:
    """A histogram of counts already binned: ``counts[i]`` values in ``[edges[i], edges[i+1])``."""
    if counts and len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} counts need {len(counts) + 1} edges, got {len(edges)}")
    figure, axes = _figure(title, size)
    if not counts or not any(counts):
        return _empty(figure, axes, empty_text)
    widths = [b - a for a, b in itertools.pairwise(edges)]
    axes.bar(list(edges[:-1]), list(counts), width=widths, align="edge", color=PALETTE[0], edgecolor="white")
    _value_axis(axes.xaxis, value_format)
    _value_axis(axes.yaxis, plain_number, integer=True)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", color=_GRID)
    return _png(figure)


def line_chart(
    x: Sequence[XValue],
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    value_format: ValueFormat = plain_number,
    markers: bool = True,
    fill: bool = False,
    integer_values: bool = False,
    empty_text: str = "no data",
    size: ChartSize = DEFAULT_SIZE,
) -> bytes:
    """Each series as a line over ``x`` (numbers, or dates/datetimes for a time series); ``fill`` shades
    the area under a single series. A legend appears when there is more than one series."""
    for one in series:
        _same_length(x, one.values, f"series {one.name!r}")
    figure, axes = _figure(title, size)
    if not x or not series:
        return _empty(figure, axes, empty_text)
    xs: Any = list(x)  # numbers, or dates that matplotlib's date converter takes
    for index, one in enumerate(series):
        colour = _colour(index)
        axes.plot(xs, list(one.values), label=one.name, color=colour, marker="o" if markers else None, ms=3)
        if fill and len(series) == 1:
            axes.fill_between(xs, list(one.values), color=colour, alpha=0.15)
    if isinstance(xs[0], date | datetime):
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    _value_axis(axes.yaxis, value_format, integer_values)
    axes.set_ylim(bottom=min(0.0, *(min(one.values) for one in series if one.values)))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(color=_GRID)
    if len(series) > 1:
        axes.legend(fontsize=8, frameon=False)
    return _png(figure)


# -- shared drawing ----------------------------------------------------------------------------------------


def _figure(title: str, size: ChartSize) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(size.width_in, size.height_in), dpi=size.dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, loc="left", fontsize=11, color=_TEXT)
    axes.tick_params(labelsize=8, colors=_TEXT)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure, axes


def _empty(figure: Figure, axes: Axes, text: str) -> bytes:
    axes.set_xticks([])
    axes.set_yticks([])
    axes.text(
        0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=12, color="#777777"
    )
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None}, facecolor="white")
    return buffer.getvalue()


def _value_axis(axis: Axis, value_format: ValueFormat, integer: bool = False) -> None:
    if integer:  # counts: no tick at 0.5 payments
        axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: value_format(v)))


def _rotate_if_crowded(axes: Axes, labels: Sequence[str]) -> None:
    if len(labels) > 8 or sum(len(label) for label in labels) > 60:
        axes.tick_params(axis="x", labelrotation=45)
        for label in axes.get_xticklabels():
            label.set_horizontalalignment("right")


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _same_length(labels: Sequence[object], values: Sequence[float], what: str) -> None:
    if len(labels) != len(values):
        raise ValueError(f"{what} has {len(values)} values for {len(labels)} labels")
