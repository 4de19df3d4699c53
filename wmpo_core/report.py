"""Run reports: ``report.json`` (machine-readable) and ``report.html`` (one self-contained page).

``report.json`` fields:

- ``title``, ``task``, ``generated_at`` (ISO 8601 UTC)
- ``versions``: one row per evaluated policy version, in order:
  ``label`` (e.g. "before" / "after"), ``version``, ``parent``, ``success_rate``,
  ``ci95`` ([low, high], Wilson score interval), ``episodes``, ``successes``, ``seeds``,
  ``evaluated_via`` (e.g. "ROS 2 graph")
- ``stages``: one row per stage: ``name``, ``title``, ``estimate_s``, ``seconds`` (measured, or
  null when it did not run), ``reused`` (finished in an earlier run)
- ``curves``: {chart title: {series name: [[step, value], ...]}}
- ``videos``: [{``title``, ``path``}] relative to the report folder
- ``notes``: free-form lines

The HTML page needs nothing from the network: charts are inline SVG drawn here and GIFs
are embedded as data URIs (MP4s are linked next to the page).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wmpo_core.stats import paired_verdict

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
VERSION_FIELDS = ("label", "version", "parent", "success_rate", "ci95", "episodes", "successes", "seeds",
                  "evaluated_via")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def version_row(label: str, version: str | None, successes: int, episodes: int, *, parent: str | None = None,
                seeds: Sequence[int] = (), evaluated_via: str = "") -> dict[str, Any]:
    """One ``versions`` row: success rate with its 95% Wilson interval."""
    from wmpo_core.stats import wilson_interval

    lo, hi = wilson_interval(successes, episodes)
    return {"label": label, "version": version, "parent": parent,
            "success_rate": successes / episodes if episodes else 0.0, "ci95": [lo, hi], "episodes": episodes,
            "successes": successes, "seeds": list(seeds), "evaluated_via": evaluated_via}


def read_tensorboard_scalars(logdir: str | Path, tags: Sequence[str] | None = None) -> dict[str, list[list[float]]]:
    """Scalars of a TensorBoard log folder as {tag: [[step, value], ...]} (empty when there is none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    if not logdir.is_dir():
        return {}
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, list[list[float]]] = {}
    for tag in acc.Tags().get("scalars", []):
        if tags is None or tag in tags:
            out[tag] = [[float(e.step), float(e.value)] for e in acc.Scalars(tag)]
    return out


def read_jsonl_series(path: str | Path, x: str, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """Series ``keys`` against ``x`` from a JSON-lines log (rows lacking a key are skipped for it)."""
    path = Path(path)
    out: dict[str, list[list[float]]] = {k: [] for k in keys}
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        for k in keys:
            if isinstance(row.get(k), int | float) and isinstance(row.get(x), int | float):
                out[k].append([float(row[x]), float(row[k])])
    return {k: v for k, v in out.items() if v}


def _finite(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in points if math.isfinite(a) and math.isfinite(b)]


def svg_line_chart(series: Mapping[str, Sequence[Sequence[float]]], title: str, width: int = 420,
                   height: int = 240) -> str:
    """A line chart as an inline SVG string (no plotting library is part of the stack)."""
    clean = {name: _finite(pts) for name, pts in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    left, right, top, bottom = 56, 12, 28, 36
    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * len(clean)}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{esc(title)}</text>']
    if not clean:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(parts)
    xs = [p[0] for pts in clean.values() for p in pts]
    ys = [p[1] for pts in clean.values() for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="10">{yv:.3g}</text>')
        xv = x0 + frac * (x1 - x0)
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{xv:.4g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle" font-size="10">step</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{color}"/>')
        else:
            path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        ly = height + 12 + 18 * i
        parts.append(f'<rect x="{left}" y="{ly - 9}" width="12" height="4" fill="{color}"/>'
                     f'<text x="{left + 18}" y="{ly}" font-size="11">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _versions_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>policy</th><th>version</th><th>parent</th><th>success</th><th>95% CI</th><th>episodes</th><th>evaluated via</th></tr>"
    body = []
    for r in rows:
        lo, hi = r.get("ci95") or (None, None)
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r.get("label", ""), r.get("version") or "-", r.get("parent") or "-",
            f"{_pct(r.get('success_rate'))} ({r.get('successes', '-')}/{r.get('episodes', '-')})",
            f"{_pct(lo)} - {_pct(hi)}", r.get("episodes", "-"), r.get("evaluated_via", ""))) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _stages_table(stages: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>stage</th><th>estimate</th><th>measured</th><th></th></tr>"
    body = []
    for s in stages:
        measured = s.get("seconds")
        body.append(f"<tr><td>{html.escape(str(s.get('title') or s.get('name')))}</td>"
                    f"<td>{s.get('estimate_s', 0):.0f} s</td>"
                    f"<td>{'-' if measured is None else f'{measured:.0f} s'}</td>"
                    f"<td>{'reused from an earlier run' if s.get('reused') else ''}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _video_html(out_dir: Path, video: Mapping[str, str]) -> str:
    path = out_dir / video["path"]
    title = html.escape(video.get("title", path.name))
    if not path.is_file():
        return f"<figure><figcaption>{title}: missing ({html.escape(str(path))})</figcaption></figure>"
    if path.suffix.lower() == ".gif":
        data = base64.b64encode(path.read_bytes()).decode()
        mp4 = path.with_suffix(".mp4")
        link = f' (<a href="{html.escape(mp4.name)}">mp4</a>)' if mp4.is_file() else ""
        return (f'<figure><img alt="{title}" src="data:image/gif;base64,{data}"/>'
                f"<figcaption>{title}{link}</figcaption></figure>")
    return f'<figure><a href="{html.escape(video["path"])}">{title}</a></figure>'


def _paired_html(paired: Mapping[str, Any] | None) -> str:
    if paired is None:
        return ""
    return (f"<p>paired on {int(paired['pairs'])} start states: the newer version solves {int(paired['wins'])} "
            f"the older one fails and fails {int(paired['losses'])} it solves; the newer version is "
            f"{html.escape(paired_verdict(paired))}</p>")


def write_report(out_dir: str | Path, *, title: str, task: str, versions: Sequence[Mapping[str, Any]],
                 stages: Sequence[Mapping[str, Any]] = (), curves: Mapping[str, Mapping[str, Any]] | None = None,
                 videos: Sequence[Mapping[str, str]] = (), notes: Sequence[str] = (),
                 paired: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns their paths.

    ``versions`` rows need at least ``success_rate``, ``ci95`` and ``episodes`` (see
    :func:`version_row`); video paths are relative to ``out_dir``. ``paired``: the last two
    versions on the same start states (:func:`wmpo_core.stats.paired_outcomes`), if measured.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(versions):
        missing = [k for k in ("success_rate", "ci95", "episodes") if k not in row]
        if missing:
            raise ValueError(f"report versions[{i}] ({row.get('label')}): missing field(s) {missing}")
    curves = dict(curves or {})
    data = {
        "title": title, "task": task, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": [{k: row.get(k) for k in VERSION_FIELDS} | dict(row) for row in versions],
        "stages": [dict(s) for s in stages], "curves": curves, "videos": [dict(v) for v in videos],
        "notes": list(notes), "paired": dict(paired) if paired is not None else None,
    }
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    charts = "".join(f"<div class='chart'>{svg_line_chart(series, name)}</div>" for name, series in curves.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f0f0f0; }}
.chart {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>task <b>{html.escape(task)}</b>, generated {data['generated_at']}</p>
<h2>Success rates</h2>
{_versions_table(data['versions'])}
{_paired_html(paired)}
<h2>Training curves</h2>
{charts or '<p>no training logs found</p>'}
<h2>Real vs imagined</h2>
<p>left: the recorded episode; right: the world model imagining it from the same first frame.</p>
{''.join(_video_html(out_dir, v) for v in videos) or '<p>no video</p>'}
<h2>Stages</h2>
{_stages_table(data['stages'])}
{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
</body></html>
"""
    html_path = out_dir / REPORT_HTML
    html_path.write_text(page)
    return html_path, json_path
