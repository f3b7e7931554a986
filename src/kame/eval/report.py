"""``report.html``: one self-contained page (figures embedded as PNG) to read an evaluation at a glance.

The table has the paper's layout (a row per system: the category scores, their average and the median
response latency), then per-category bars, the latency distributions (CDF), score against latency, the
latency details, and every setting the run used.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

LABELS = {"stem": "STEM"}


def _label(category: str) -> str:
    return LABELS.get(category, category.capitalize())


def _fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return '<img alt="" src="data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode() + '">'


def _figures(results: dict[str, Any], answers: list[dict], judgments: list[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems, categories = results["systems"], results["categories"]
    names = list(systems)
    figures = {}

    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(categories) + 1)
    for i, name in enumerate(names):
        values = [systems[name]["score"].get(c) or 0.0 for c in [*categories, "average"]]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(x, [_label(c) for c in categories] + ["Average"])
    ax.set_ylim(0, 10)
    ax.set_ylabel("judge score (1-10)")
    ax.legend(fontsize=8, ncol=min(4, len(names)))
    figures["bars"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name in names:
        values = sorted(a["latency"] for a in answers if a["system"] == name and a.get("latency") is not None)
        if values:
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=name)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("response latency (s): first reply word - end of the user's last word")
    ax.set_ylabel("share of turns")
    ax.set_ylim(0, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    figures["cdf"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.4))
    scores = {}
    for j in judgments:
        if j["score"] >= 0:
            scores.setdefault((j["system"], str(j["question_id"]), j["run"], j["turn"]), []).append(
                j["score"]
            )
    for i, name in enumerate(names):
        color = f"C{i}"
        points = [
            (a["latency"], np.mean(scores[key]))
            for a in answers
            if a["system"] == name
            and a.get("latency") is not None
            and (key := (name, str(a["question_id"]), a["run"], a["turn"])) in scores
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=12, alpha=0.35, color=color)
        summary = systems[name]
        if summary["latency"]["median"] is not None and summary["score"]["average"] is not None:
            ax.scatter(
                [summary["latency"]["median"]],
                [summary["score"]["average"]],
                s=90,
                color=color,
                edgecolor="black",
                label=f"{name} (median, average)",
            )
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("response latency (s)")
    ax.set_ylabel("judge score")
    ax.set_ylim(0, 10.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    figures["scatter"] = _png(fig)
    return figures


def render_report(
    results: dict[str, Any], answers: list[dict], judgments: list[dict], notes: list[str]
) -> str:
    systems, categories, settings = results["systems"], results["categories"], results["settings"]
    figures = _figures(results, answers, judgments)
    esc = html.escape
    head = "".join(f"<th>{esc(_label(c))}</th>" for c in categories)
    rows = []
    for name, s in systems.items():
        cells = "".join(f"<td>{_fmt(s['score'].get(c))}</td>" for c in categories)
        rows.append(
            f"<tr><th>{esc(name)}</th>{cells}<td><b>{_fmt(s['score']['average'])}</b></td>"
            f"<td>{_fmt(s['latency']['median'], 2, ' s')}</td></tr>"
        )
    detail = []
    for name, s in systems.items():
        lat = s["latency"]
        share = "-" if lat["before_user_end"] is None else f"{100 * lat['before_user_end']:.0f} %"
        turns = ", ".join(f"turn {t}: {_fmt(v)}" for t, v in s["turn_score"].items())
        turn_latency = ", ".join(
            f"turn {t}: {_fmt(v['median'], 2, ' s')}" for t, v in (s.get("turn_latency") or {}).items()
        )
        cells = [
            _fmt(lat["median"], 2, " s"),
            _fmt(lat["p90"], 2, " s"),
            share,
            esc(turn_latency),
            str(lat["n"]),
            str(lat.get("silent", 0)),
            esc(turns),
            f"{s['judge_failures']} / {s['judgments']}",
            _fmt(s["wall_s_per_question"], 1, " s"),
        ]
        detail.append(f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    setting_rows = "".join(
        f"<tr><th>{esc(str(k))}</th><td><code>{esc(str(v))}</code></td></tr>" for k, v in settings.items()
    )
    note_items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kame eval: speech MT-Bench</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }}
th:first-child {{ text-align: left; }}
thead th {{ background: #f3f3f3; }}
.notes li {{ margin: 0.2rem 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Speech MT-Bench</h1>
<ul class="notes">{note_items}</ul>
<h2>Scores (judge, 1-10) and median response latency</h2>
<table><thead><tr><th>system</th>{head}<th>avg</th><th>median latency</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p>Response latency: the reply's first word minus the end of the user's last word (from the question TTS's
word times); negative when the system started before the user finished. The paper reports such medians
as "0.0 s".</p>
<h2>Per category</h2>{figures["bars"]}
<h2>Latency distribution</h2>{figures["cdf"]}
<h2>Score against latency</h2>{figures["scatter"]}
<p>Small dots: one turn each (its mean score over runs); large dots: a system's median latency and average
score.</p>
<h2>Details</h2>
<table><thead><tr><th>system</th><th>median</th><th>p90</th><th>started before the user finished</th>
<th>median per turn</th><th>turns timed</th><th>silent turns</th><th>score per turn</th>
<th>judge failures</th><th>wall time per question</th></tr></thead><tbody>{"".join(detail)}</tbody></table>
<h2>Settings</h2><table>{setting_rows}</table>
</body></html>
"""


def write_report(
    path: Path, results: dict[str, Any], answers: list[dict], judgments: list[dict], notes: list[str]
) -> Path:
    path.write_text(render_report(results, answers, judgments, notes), encoding="utf-8")
    return path
