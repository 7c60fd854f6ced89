"""A batch report as one self-contained HTML page: what people look at instead of ``report.json``.

:func:`render_report_html` turns the batch report (``BatchReport.model_dump(mode="json")``,
see :mod:`flows.models`) into one HTML document: the run (preset and version, run id, start
and finish, counts, why it stopped early), a table of every file (verdict, reason in full,
integrated loudness and true peak in, and per rendition integrated loudness, true peak and
render attempts), then one section per file with its loudness-over-time plot and the details
of its renditions (retry reasons, failed checks, warnings).

The plot shows the momentary (400 ms) and short-term (3 s) loudness of the source and the
short-term loudness of each rendition (EBU Tech 3341), the preset's target band
(``target_lufs`` +/- ``tolerance_lu``) and its true-peak ceiling (dBTP, BS.1770-4 Annex 2).
Plots are drawn by matplotlib straight to SVG and inlined: the page has no scripts and loads
no fonts, style sheets or images, so it opens offline and from any storage.

matplotlib is imported when a page is rendered, never at import time (the CLI does not pay
for it). Figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``: no
backend is selected, no GUI is touched, and no figure stays registered in ``pyplot``'s
global list, so nothing leaks and renders are safe in Prefect's worker threads.

References
----------
ITU-R BS.1770-4 (10/2015); EBU Tech 3341 (2016).
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import math
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["render_report_html", "write_report_html"]

#: Lowest and highest loudness (LUFS) a plot's y axis shows.
PLOT_FLOOR_LUFS = -60.0
PLOT_TOP_LUFS = 0.0
#: Plot size (inches at 72 dpi in the SVG: 10 x 3.4 in = 720 x 245 pt).
PLOT_SIZE_IN = (10.0, 3.4)
#: Line colours of the renditions, in order (matplotlib's tab10 without the band's green
#: and the ceiling's red).
RENDITION_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
VERDICT_COLOURS = {"published": "#1b7f3b", "rejected": "#b45f06", "failed": "#b3261e"}

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; padding: 24px 32px 64px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
a { color: #0b57d0; }
.meta { color: #555; margin: 0 0 12px; }
.meta span { margin-right: 18px; white-space: nowrap; }
.counts span { display: inline-block; margin: 0 8px 6px 0; padding: 3px 10px; border-radius: 12px;
               background: #eceff3; font-weight: 600; }
.stopped { border: 2px solid #b3261e; background: #fdecea; color: #7a1c15; padding: 10px 14px;
           border-radius: 6px; font-weight: 600; margin: 12px 0; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; }
th, td { border: 1px solid #dcdcdc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f8f9fb; }
.file { overflow-wrap: anywhere; min-width: 10em; max-width: 24em; }
.reason { white-space: pre-wrap; overflow-wrap: anywhere; min-width: 18em; max-width: 40em; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; min-width: 10em; max-width: 30em; }
.scroll { overflow-x: auto; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600;
           font-size: 12px; white-space: nowrap; }
.path, .mono { color: #444; font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px;
               overflow-wrap: anywhere; }
section.source { background: #fff; border: 1px solid #dcdcdc; border-radius: 8px; padding: 4px 18px 14px;
                 margin: 18px 0; }
section.source h2 { margin-top: 12px; overflow-wrap: anywhere; }
.plot svg { width: 100%; max-width: 1000px; height: auto; display: block; }
.plot svg * { stroke-linejoin: round; stroke-linecap: butt; }
.noplot { color: #777; font-style: italic; }
ul.warnings { margin: 4px 0; padding-left: 20px; color: #7a4b00; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
footer { color: #777; margin-top: 40px; font-size: 12px; }
"""


# --------------------------------------------------------------------------- text helpers


def _text(value: Any) -> str:
    """Any value as HTML-escaped text that can always be encoded as UTF-8."""
    text = "" if value is None else str(value)
    # A lone surrogate (an undecodable file name that skipped display_name) becomes \udcNN text.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def _number(value: Any, *, digits: int = 1) -> str:
    """A measurement for a table cell: ``""`` when absent, the text itself when not a number."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _text(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.{digits}f}"


def _base_name(path: str) -> str:
    """Last segment of a local path or a URI (the whole string when it ends with ``/``)."""
    name = PurePosixPath(path).name
    return name or path


def _verdict_badge(verdict: Any) -> str:
    colour = VERDICT_COLOURS.get(str(verdict), "#555555")
    return f'<span class="verdict" style="background:{colour}">{_text(verdict)}</span>'


def _duration_s(started_at: Any, finished_at: Any) -> float | None:
    """Seconds between two ISO 8601 times, ``None`` when either does not parse."""
    try:
        return (datetime.fromisoformat(str(finished_at)) - datetime.fromisoformat(str(started_at))).total_seconds()
    except (TypeError, ValueError):
        return None


def _anchor(index: int) -> str:
    return f"source-{index + 1}"


# --------------------------------------------------------------------------- plots


def _has_series(source: dict) -> bool:
    """Whether a source gets a plot: its own series or any rendition's."""
    return bool(source.get("series_in")) or any(r.get("series") for r in source.get("renditions") or [])


def _series_xy(series: dict, key: str):
    """(seconds, LUFS) of one series; ``None`` values become NaN, which matplotlib draws as gaps.

    Value ``j`` is the window ending at ``(j + 1) * hop_s`` (``LoudnessSeries``).
    """
    import numpy as np

    values = series.get(key) or []
    lufs = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    hop_s = float(series.get("hop_s") or 0.1)
    return (np.arange(lufs.size) + 1.0) * hop_s, lufs


def _plain_label(text: str) -> str:
    """A legend label that is not hidden: matplotlib's legend skips labels starting with ``_``."""
    return "\u200b" + text if text.startswith("_") else text


def _loudness_plot_svg(source: dict, target: dict) -> str:
    """The loudness-over-time plot of one source, drawn by matplotlib as an SVG document.

    Parameters
    ----------
    source : dict
        One ``SourceOutcome`` as JSON, with ``series_in`` and/or rendition ``series``.
    target : dict
        The preset's ``LoudnessTarget`` as JSON (``target_lufs``, ``tolerance_lu``,
        ``ceiling_dbtp``; any may be ``None`` or absent).

    Returns
    -------
    str
        matplotlib's SVG document; :func:`_inline_svg` makes it an element for the page.
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE_IN, layout="constrained")
    ax = fig.add_subplot()
    finite: list[np.ndarray] = []
    duration_s = 0.0

    def draw(series: dict, key: str, **style) -> None:
        nonlocal duration_s
        x, y = _series_xy(series, key)
        if x.size:
            duration_s = max(duration_s, float(x[-1]))
            finite.append(y[np.isfinite(y)])
        ax.plot(x, y, **style)

    series_in = source.get("series_in")
    if series_in:
        draw(series_in, "momentary_lufs", color="#a8a8a8", linewidth=0.8, label="source momentary", zorder=2)
        draw(series_in, "short_term_lufs", color="#222222", linewidth=1.8, label="source short-term", zorder=4)
    for i, rendition in enumerate(r for r in source.get("renditions") or [] if r.get("series")):
        draw(rendition["series"], "short_term_lufs", color=RENDITION_COLOURS[i % len(RENDITION_COLOURS)],
             linewidth=1.4, label=_plain_label(f"{rendition.get('name') or 'rendition'} short-term"), zorder=5)

    target_lufs = target.get("target_lufs")
    tolerance_lu = target.get("tolerance_lu") or 0.0
    ceiling_dbtp = target.get("ceiling_dbtp")
    if target_lufs is not None:
        ax.axhspan(target_lufs - tolerance_lu, target_lufs + tolerance_lu, color="#2ca02c", alpha=0.18, lw=0,
                   label=f"target {target_lufs:.1f} \u00b1 {tolerance_lu:.1f} LUFS", zorder=1)
        ax.axhline(target_lufs, color="#2ca02c", linewidth=0.8, alpha=0.7, zorder=1)
    if ceiling_dbtp is not None:
        ax.axhline(ceiling_dbtp, color="#d62728", linestyle="--", linewidth=1.2,
                   label="true-peak ceiling (dBTP)", zorder=3)

    values = np.concatenate(finite) if finite else np.empty(0)
    lowest = float(values.min()) if values.size else PLOT_FLOOR_LUFS
    if target_lufs is not None:
        lowest = min(lowest, target_lufs - tolerance_lu)
    # Bottom: 5 LU below the quietest value, on a 10 LU grid, between -60 and -30 LUFS.
    bottom = min(-30.0, max(PLOT_FLOOR_LUFS, 10.0 * math.floor((lowest - 5.0) / 10.0)))
    ax.set_ylim(bottom, PLOT_TOP_LUFS)
    ax.set_xlim(0.0, duration_s if duration_s > 0 else 1.0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("loudness (LUFS)")
    ax.grid(True, color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    for text in legend.get_texts():
        text.set_parse_math(False)  # a "$" in a rendition name is text, not mathtext

    buffer = io.StringIO()
    # Text as <text> in the page's fonts: nothing to embed, nothing to load.
    # Fixed hash salt: the same report gives the same page.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "puresound"}):
        fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    return buffer.getvalue()


def _plot_key(source: dict, target: dict) -> str:
    """SHA-256 of what a plot draws (series, rendition names, target) and of the code drawing it."""
    import hashlib
    import json

    drawn = {"series_in": source.get("series_in"), "target": target,
             "renditions": [(r.get("name"), r.get("series")) for r in source.get("renditions") or []]}
    digest = hashlib.sha256(json.dumps(drawn, sort_keys=True, default=str).encode())
    digest.update(_drawing_code_id().encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _drawing_code_id() -> str:
    """matplotlib's version and this module's bytes: new drawing code never serves older drawings."""
    import hashlib
    from importlib.metadata import version  # not matplotlib itself: a page read back from the cache never imports it

    return f"{version('matplotlib')}:{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}"


def _cached_plot_svg(source: dict, target: dict, *, index: int, title: str, cache_dir: Path | None) -> str:
    """:func:`_loudness_plot_svg` inlined, its drawing kept in ``cache_dir`` for the next page that shows it.

    A re-run of a batch shows the same series again; drawing them costs about 0.1-0.3 s per
    plot, reading them back a file read. Cache files are written atomically; one that cannot
    be read or written is drawn again.
    """
    path = None
    if cache_dir is not None:
        try:
            key = _plot_key(source, target)
        except OSError:  # this module's source is not readable (a bytecode-only install): no cache
            key = None
        path = None if key is None else Path(cache_dir) / key[:2] / f"{key}.svg"
        try:
            kept = path.read_text(encoding="utf-8") if path is not None else ""
            if kept.rstrip().endswith("</svg>"):  # anything else (cut short, emptied) is drawn again
                return _inline_svg(kept, id_prefix=f"plot{index}-", title=title)
        except (OSError, UnicodeDecodeError):
            pass
    svg = _loudness_plot_svg(source, target)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "x", encoding="utf-8") as handle:
                handle.write(svg)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return _inline_svg(svg, id_prefix=f"plot{index}-", title=title)


def _inline_svg(svg: str, *, id_prefix: str, title: str) -> str:
    """matplotlib's SVG file as an element for an HTML page.

    Drops the prolog and DOCTYPE, the namespace declarations (implied in HTML) and the
    document-wide ``<style>`` (its rules are in the page's CSS, scoped to plots), uses SVG 2
    ``href`` for ``xlink:href``, prefixes every id (several inline SVGs share one document's
    id space) and gives the image an accessible name. Only tags are rewritten, never text.
    """
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    svg = re.sub(r"\s*<style[^>]*>[^<]*</style>", "", svg, count=1)

    def fix_tag(match: re.Match) -> str:
        tag = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", match.group(0))
        tag = tag.replace("xlink:href=", "href=")
        tag = re.sub(r'(\sid="|\shref="#|url\(#)', lambda m: m.group(1) + id_prefix, tag)
        return tag

    svg = re.sub(r"<[^>]+>", fix_tag, svg)
    return svg.replace("<svg", f'<svg role="img" aria-label="{_text(title)}"', 1).strip()


# --------------------------------------------------------------------------- page


def _rendition_names(sources: Iterable[dict]) -> list[str]:
    """Every rendition name of the batch, in order of first appearance."""
    names: dict[str, None] = {}
    for source in sources:
        for rendition in source.get("renditions") or []:
            names.setdefault(str(rendition.get("name")), None)
    return list(names)


def _summary_table(sources: Sequence[dict]) -> list[str]:
    names = _rendition_names(sources)
    out = ['<div class="scroll"><table class="summary">', "<thead>", "<tr>",
           '<th rowspan="2">file</th><th rowspan="2">verdict</th><th rowspan="2">reason</th>',
           '<th rowspan="2" class="num">LUFS in</th><th rowspan="2" class="num">dBTP in</th>']
    out += [f'<th colspan="3">{_text(name)}</th>' for name in names]
    out.append("</tr><tr>")
    out += ['<th class="num">LUFS</th><th class="num">dBTP</th><th class="num">attempts</th>' for _ in names]
    out += ["</tr>", "</thead>", "<tbody>"]
    for i, source in enumerate(sources):
        path = str(source.get("path", ""))
        by_name = {str(r.get("name")): r for r in source.get("renditions") or []}
        cells = [f'<td class="file"><a href="#{_anchor(i)}" title="{_text(path)}">{_text(_base_name(path))}</a></td>',
                 f"<td>{_verdict_badge(source.get('verdict'))}</td>",
                 f'<td class="reason">{_text(source.get("reason"))}</td>',
                 f'<td class="num">{_number(source.get("integrated_lufs_in"))}</td>',
                 f'<td class="num">{_number(source.get("true_peak_dbtp_in"))}</td>']
        for name in names:
            r = by_name.get(name)
            if r is None:
                cells.append('<td class="num"></td>' * 3)
            else:
                cells += [f'<td class="num">{_number(r.get("integrated_lufs"))}</td>',
                          f'<td class="num">{_number(r.get("true_peak_dbtp"))}</td>',
                          f'<td class="num">{_number(r.get("attempts"), digits=0)}</td>']
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return out


def _yes_no(value: Any) -> str:
    return "" if value is None else ("yes" if value else "no")


def _renditions_table(renditions: Sequence[dict]) -> list[str]:
    out = ['<div class="scroll"><table class="renditions">', "<thead><tr>",
           '<th>rendition</th><th>verified</th><th class="num">LUFS</th><th class="num">single-channel LUFS</th>',
           '<th class="num">dBTP</th><th class="num">attempts</th><th>limiter (max gain reduction)</th>',
           '<th>retry reason</th><th>failed checks</th><th class="num">size (kB)</th>',
           "</tr></thead>", "<tbody>"]
    for r in renditions:
        size_bytes = r.get("size_bytes")
        codec = r.get("codec") or {}
        codec_text = ", ".join(f"{k}={v}" for k, v in codec.items()) if isinstance(codec, dict) else str(codec)
        limiter = "active" if r.get("limiter_active") else "off"
        if r.get("max_gain_reduction_db"):
            limiter += f" ({_number(r.get('max_gain_reduction_db'), digits=2)} dB)"
        out.append("<tr>" + "".join([
            (f'<td class="file"><strong>{_text(r.get("name"))}</strong>'
             f'<div class="path">{_text(codec_text)}</div><div class="path">{_text(r.get("uri"))}</div></td>'),
            f"<td>{_yes_no(r.get('verified'))}</td>",
            f'<td class="num">{_number(r.get("integrated_lufs"), digits=2)}</td>',
            f'<td class="num">{_number(r.get("single_channel_lufs"), digits=2)}</td>',
            f'<td class="num">{_number(r.get("true_peak_dbtp"), digits=2)}</td>',
            f'<td class="num">{_number(r.get("attempts"), digits=0)}</td>',
            f"<td>{limiter}</td>",
            f'<td class="text">{_text(r.get("retry_reason"))}</td>',
            f'<td class="text">{_text("; ".join(map(str, r.get("failed_checks") or [])))}</td>',
            f'<td class="num">{"" if size_bytes is None else _number(size_bytes / 1000, digits=0)}</td>',
        ]) + "</tr>")
    out += ["</tbody>", "</table></div>"]
    return out


def _source_section(index: int, source: dict, target: dict, plot_cache_dir: Path | None = None) -> list[str]:
    path = str(source.get("path", ""))
    name = _base_name(path)
    out = [f'<section class="source" id="{_anchor(index)}">',
           f"<h2>{index + 1}. {_text(name)} {_verdict_badge(source.get('verdict'))}</h2>",
           '<dl class="facts">',
           f'<dt>path</dt><dd class="path">{_text(path)}</dd>']
    if source.get("reason"):
        out.append(f'<dt>reason</dt><dd class="reason">{_text(source.get("reason"))}</dd>')
    if source.get("failed_rules"):
        out.append(f"<dt>failed rules</dt><dd>{_text(', '.join(map(str, source['failed_rules'])))}</dd>")
    facts = [("integrated loudness in", _number(source.get("integrated_lufs_in"), digits=2), "LUFS"),
             ("true peak in", _number(source.get("true_peak_dbtp_in"), digits=2), "dBTP"),
             ("content class", _text(source.get("content_class")), ""),
             ("processing time", _number(source.get("seconds")), "s"),
             ("SHA-256", _text(source.get("sha256")), "")]
    out += [f"<dt>{label}</dt><dd>{value} {unit}</dd>" for label, value, unit in facts if value]
    out.append("</dl>")
    warnings = source.get("warnings") or []
    if warnings:
        out += ["<h3>warnings</h3>", '<ul class="warnings">']
        out += [f"<li>{_text(w)}</li>" for w in warnings]
        out.append("</ul>")
    if _has_series(source):
        plot = _cached_plot_svg(source, target, index=index, title=f"Loudness over time of {name}",
                                cache_dir=plot_cache_dir)
        out += ['<div class="plot">', plot, "</div>"]
    else:
        out.append('<p class="noplot">No loudness series for this file.</p>')
    renditions = source.get("renditions") or []
    if renditions:
        out += ["<h3>renditions</h3>", *_renditions_table(renditions)]
    out += ['<p><a href="#files">back to the table</a></p>', "</section>"]
    return out


def render_report_html(report: dict, *, plot_cache_dir: str | os.PathLike | None = None) -> str:
    """A batch report as one self-contained HTML document.

    Parameters
    ----------
    report : dict
        ``flows.models.BatchReport.model_dump(mode="json")`` (the content of
        ``report.json``). Missing optional keys are shown as empty.
    plot_cache_dir : str or os.PathLike, optional
        Folder keeping each plot's drawing under the SHA-256 of what it draws (and of the
        drawing code and matplotlib version): a page showing the same series again (a re-run)
        reads it instead of drawing it, and the page is the same. Fonts and ``matplotlibrc``
        are not in the key: after changing them, empty the folder.

    Returns
    -------
    str
        The HTML5 document: inline CSS, one inline SVG loudness plot per source that has a
        series (its own ``series_in`` or any rendition's ``series``), no scripts and no
        external URLs. Every string from the report is HTML-escaped.

    Notes
    -----
    The plot's x axis is seconds (value ``j`` of a series at ``(j + 1) * hop_s``), its y axis
    LUFS between -60 and 0; ``None`` values are gaps. The target band is
    ``target_lufs +/- tolerance_lu`` (not drawn when ``target_lufs`` is ``None``); the
    dashed line is the true-peak ceiling ``ceiling_dbtp`` in dBTP (not drawn when ``None``).
    About 0.1-0.3 s per plot drawn.

    References
    ----------
    EBU Tech 3341 (2016): momentary and short-term loudness.
    """
    sources: list[dict] = list(report.get("sources") or [])
    target: dict = report.get("loudness_target") or {}
    preset, version = report.get("preset", ""), report.get("preset_version", "")
    title = f"Pure Sound report: {preset} v{version}"

    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           # No network: forbid every fetch, allow only the inline style sheet and inline styles.
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           f"<title>{_text(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{_text(title)}</h1>", '<p class="meta">']
    duration_s = _duration_s(report.get("started_at"), report.get("finished_at"))
    meta = [("run", report.get("flow_run_id") or "local"), ("started", report.get("started_at")),
            ("finished", report.get("finished_at"))]
    out += [f"<span>{label}: <span class=\"mono\">{_text(value)}</span></span>" for label, value in meta]
    if duration_s is not None:
        out.append(f"<span>took {duration_s:.1f} s</span>")
    out.append("</p>")
    if report.get("stopped"):
        out.append(f'<div class="stopped" role="alert">Run stopped early: {_text(report["stopped"])}</div>')
    counts = report.get("counts") or {}
    out.append('<p class="counts">' + "".join(f"<span>{_text(k)}: {_text(v)}</span>" for k, v in counts.items())
               + "</p>")
    if target:
        band = ""
        if target.get("target_lufs") is not None:
            band = f"{_number(target['target_lufs'])} \u00b1 {_number(target.get('tolerance_lu') or 0.0)} LUFS"
        ceiling = "" if target.get("ceiling_dbtp") is None else f"{_number(target['ceiling_dbtp'])} dBTP"
        parts = [f"target {band}" if band else "", f"true-peak ceiling {ceiling}" if ceiling else ""]
        out.append(f'<p class="meta">Loudness target: {"; ".join(p for p in parts if p) or "none"}.</p>')
        out += ["<details><summary>all loudness settings</summary>", '<dl class="facts">']
        out += [f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in target.items()]
        out += ["</dl>", "</details>"]

    out.append(f'<h2 id="files">Files ({len(sources)})</h2>')
    out += _summary_table(sources) if sources else ["<p>No files were processed.</p>"]
    skipped = report.get("skipped") or []
    if skipped:
        out += [f"<details><summary>{len(skipped)} skipped without being read</summary>", '<ul class="path">']
        out += [f"<li>{_text(s)}</li>" for s in skipped]
        out += ["</ul>", "</details>"]
    for i, source in enumerate(sources):
        out += _source_section(i, source, target, None if plot_cache_dir is None else Path(plot_cache_dir))
    out += [("<footer>Written by Pure Sound from report.json. Loudness per ITU-R BS.1770-4, "
             "momentary and short-term per EBU Tech 3341.</footer>"), "</body>", "</html>", ""]
    return "\n".join(out)


def write_report_html(report: dict, path: str | os.PathLike) -> Path:
    """Render a batch report and write it atomically.

    Parameters
    ----------
    report : dict
        As for :func:`render_report_html`.
    path : str or os.PathLike
        Destination file (usually ``report.html`` beside ``report.json``); its folder is
        created if missing.

    Returns
    -------
    Path
        ``path``. Readers see the previous file or the new one, never a partial one: the page
        is written to a hidden temporary file in the same folder, then renamed over ``path``.

    Raises
    ------
    OSError
        If the folder cannot be created or written; no temporary file is left behind.
    """
    dest = Path(path)
    page = render_report_html(report).encode("utf-8")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "xb") as handle:
            handle.write(page)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
