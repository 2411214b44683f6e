"""The alignment report for people: a terminal table, report.md, report.json, PNG plots, comparisons.

Plots need matplotlib (`pip install 'rlaif[plot]'`); it is imported only when a plot
is drawn, through the object-oriented `Figure` API (no pyplot, no global backend).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.io import write_json

PLOT_HINT = "pip install 'rlaif[plot]'"
PLOT_FILES = ("reliability.png", "principles.png", "position_bias.png")


def pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def with_ci(entry: dict) -> str:
    """`72.0% [68.1%, 75.9%]`."""
    return f"{pct(entry['value'])} [{pct(entry['low'])}, {pct(entry['high'])}]"


def _skipped_text(report: dict) -> str:
    return ", ".join(f"{n} {why}" for why, n in report["skipped"].items()) or "none"


def headline_rows(report: dict) -> list[tuple[str, str, str]]:
    """(what, rate with interval, note) rows shared by the terminal table and report.md."""
    base, order, pos = report["baselines"], report["alignment_by_order"], report["position_bias"]
    lb, cal, mass = report["length_bias"], report["calibration"], report["option_mass"]
    return [
        ("labeller alignment", with_ci(report["alignment"]), f"n={report['n_scored']}, ties count half"),
        ("  order AB alone", with_ci(order["ab"]), "A shown first"),
        ("  order BA alone", with_ci(order["ba"]), "B shown first"),
        ("baseline: random", with_ci(base["random"]), "a fair coin's 95% range"),
        ("baseline: always longer", with_ci(base["always_longer"]), ""),
        ("baseline: always shorter", with_ci(base["always_shorter"]), ""),
        ("position bias (same slot)", with_ci(pos["same_slot"]),
         f"favours {pos['favoured']}: slot 1 {pct(pos['slot_1'])}, slot 2 {pct(pos['slot_2'])}; "
         f"P(prefer first) {pct(pos['p_first'])}"),
        ("labeller picks longer", with_ci(lb["ai_picks_longer"]), f"{lb['n_equal_length']} equal-length pairs left out"),
        ("humans pick longer", with_ci(lb["human_picks_longer"]), ""),
        ("calibration", f"Brier {cal['brier']:.3f}", f"ECE {cal['ece']:.3f}"),
        ("option mass", f"mean {pct(mass['mean'])}", f"median {pct(mass['median'])}, min {pct(mass['min'])}"),
    ]


def format_table(report: dict) -> str:
    """The report as an aligned plain-text table for the terminal."""
    rows = headline_rows(report)
    rows += [(f"principle: {pid}", with_ci(e), f"n={e['n']}") for pid, e in report["by_principle"].items()]
    width = max(len(r[0]) for r in rows)
    span = max(len(r[1]) for r in rows)
    lines = [f"AI labeller alignment with human labels: {report['n_scored']} of {report['n_input']} pairs scored"]
    lines += [f"{what:<{width}}  {value:<{span}}  {note}".rstrip() for what, value, note in rows]
    lines.append(f"skipped: {_skipped_text(report)}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def render_markdown(report: dict, plots: list[str] | None = None) -> str:
    """report.md: a summary sentence, the figures, calibration table, skips and warnings."""
    align, best = report["alignment"], report["baselines"]
    source = report.get("source", {})
    lines = ["# AI labeller alignment", ""]
    if source.get("model"):
        lines += [f"Labeller: `{source['model']}`" + (f", template `{source['template']}`" if source.get("template") else ""), ""]
    lines += [
        f"The labeller agrees with the human choice on **{pct(align['value'])}** of {report['n_scored']} pairs "
        f"(95% interval {pct(align['low'])} to {pct(align['high'])}); always picking the longer response gets "
        f"{pct(best['always_longer']['value'])} and a coin lands between {pct(best['random']['low'])} and "
        f"{pct(best['random']['high'])}.", "",
    ]
    lines += [f"Response A is each pair's `response_a`, the one shown first in the A-first order; `rlaif align "
              f"--human` puts the human's choice there in half of the pairs (by a seeded hash of the id), and here the "
              f"human chose A in {pct(report['share_human_a'])} of them. p_a is the labeller's probability that A is "
              "better.", ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Figures", ""] + _md_table(["", "rate [95% interval]", "note"], [list(r) for r in headline_rows(report)])
    if report["by_principle"]:
        rows = [[pid, with_ci(e), e["n"], pct(e.get("same_slot"))] for pid, e in report["by_principle"].items()]
        lines += ["", "## Per principle", ""] + _md_table(["principle", "alignment [95%]", "pairs", "same slot"], rows)
    rows = [[f"{b['low']:.1f}-{b['high']:.1f}", b["n"], f"{b['mean_p_a']:.3f}", f"{b['human_a_rate']:.3f}"]
            for b in report["calibration"]["bins"]]
    lines += ["", "## Calibration", "", "Reliability of p_a (the labeller's probability that A is better) "
              "against the share of pairs where the human chose A.", ""]
    lines += _md_table(["p_a bin", "pairs", "mean p_a", "human chose A"], rows)
    lines += ["", "## Pairs", "", f"{report['n_scored']} of {report['n_input']} pairs scored; "
              f"the human's choice was response A in {pct(report['share_human_a'])}. Skipped: {_skipped_text(report)}.",
              "", f"Settings: {json.dumps(report['settings'])}."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def matplotlib_figure() -> Any:
    """matplotlib's `Figure` class, or a clear error saying how to install it."""
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 (optional extra)
    except ImportError as err:
        raise RlaifError(f"Plots need matplotlib: {PLOT_HINT} (or pass --no-plots).") from err
    return Figure


def has_matplotlib() -> bool:
    try:
        matplotlib_figure()
    except RlaifError:
        return False
    return True


def make_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """reliability.png, principles.png (when principles are known) and position_bias.png in `out_dir`."""
    figure = matplotlib_figure()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_plot_reliability(figure, report, out_dir / PLOT_FILES[0])]
    if report["by_principle"]:
        written.append(_plot_principles(figure, report, out_dir / PLOT_FILES[1]))
    written.append(_plot_position(figure, report, out_dir / PLOT_FILES[2]))
    return written


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a share `rate` observed on `n` pairs (the error bar of a calibration bin)."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _legend_below(fig: Any, ax: Any, columns: int) -> None:
    """The legend under the axes and their label (constrained layout keeps it clear of both), where it covers
    no point, bar or error bar."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=columns, fontsize=8, frameon=False)


def _plot_reliability(figure: Any, report: dict, path: Path) -> Path:
    fig = figure(figsize=(5.5, 6), layout="constrained")
    ax = fig.subplots()
    bins = report["calibration"]["bins"]
    x = [b["mean_p_a"] for b in bins]
    y = [b["human_a_rate"] for b in bins]
    intervals = [wilson_interval(b["human_a_rate"], b["n"]) for b in bins]
    errors = [[v - lo for v, (lo, _) in zip(y, intervals)], [hi - v for v, (_, hi) in zip(y, intervals)]]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label="labeller (95% interval of each bin)")
    for b in bins:
        ax.annotate(f"n={b['n']}", (b["mean_p_a"], b["human_a_rate"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=7)
    cal = report["calibration"]
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="labeller p_a: probability that response A is better (bin mean)",
           ylabel="share of the bin's pairs where the human chose A")
    ax.set_title(f"Reliability: Brier {cal['brier']:.3f}, ECE {cal['ece']:.3f}\n"
                 f"A = the pair's first response (response_a): the human's choice in {pct(report['share_human_a'])}",
                 fontsize=10)
    _legend_below(fig, ax, 1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _plot_principles(figure: Any, report: dict, path: Path) -> Path:
    entries = report["by_principle"]
    names = list(entries)
    fig = figure(figsize=(7.5, 1.6 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    values = [entries[n]["value"] for n in names]
    errors = [[v - entries[n]["low"] for n, v in zip(names, values)], [entries[n]["high"] - v for n, v in zip(names, values)]]
    labels = [f"{n} (n={entries[n]['n']})" for n in names]
    ax.barh(labels, values, xerr=errors, capsize=3, color="tab:blue", alpha=0.5)
    ax.axvline(0.5, color="grey", linestyle="--", label="random")
    ax.axvline(report["alignment"]["value"], color="tab:green", label="all principles")
    ax.axvline(report["baselines"]["always_longer"]["value"], color="tab:orange", linestyle=":", label="always longer")
    ax.set(xlim=(0, 1), xlabel="alignment with humans (95% interval; n = pairs judged under the principle)",
           title="Alignment per principle")
    ax.invert_yaxis()
    _legend_below(fig, ax, 3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _plot_position(figure: Any, report: dict, path: Path) -> Path:
    pos = report["position_bias"]
    slot_1, slot_2 = pos["slot_1"], pos["slot_2"]
    content = 1.0 - slot_1 - slot_2 - pos["tie_in_an_order"]
    labels = ["slot 1 in both orders", "slot 2 in both orders", "tie in an order", "same response in both"]
    fig = figure(figsize=(7, 3))
    ax = fig.subplots()
    ax.barh(labels, [slot_1, slot_2, pos["tie_in_an_order"], content], color=["tab:red", "tab:red", "tab:grey", "tab:green"])
    ax.set(xlim=(0, 1), xlabel="share of pairs", title=f"Position bias: same slot in {pct(pos['same_slot']['value'])}")
    ax.invert_yaxis()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def write_report(report: dict, out_dir: str | Path, plots: bool | None = None) -> list[Path]:
    """report.json, report.md and (plots True, or None with matplotlib present) the PNGs in `out_dir`."""
    out_dir = Path(out_dir)
    pngs = make_plots(report, out_dir) if plots or (plots is None and has_matplotlib()) else []
    write_json(out_dir / "report.json", report)
    md = out_dir / "report.md"
    md.write_text(render_markdown(report, [str(p) for p in pngs]), encoding="utf-8")
    return [out_dir / "report.json", md, *pngs]


# ---------------------------------------------------------------- compare


def load_report(directory: str | Path) -> dict:
    path = Path(directory) / "report.json"
    if not path.exists():
        raise RlaifError(f"{path} does not exist: pass directories written by `rlaif align --out DIR`.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RlaifError(f"{path} is not valid JSON ({err.msg}); rerun `rlaif align` to rewrite it.") from err


def compare_rows(reports: dict[str, dict]) -> list[list[str]]:
    """One row per figure, one column per report: the figures side by side."""
    def row(name: str, get: Any) -> list[str]:
        cells = []
        for rep in reports.values():
            try:
                cells.append(get(rep))
            except (KeyError, TypeError):
                cells.append("-")
        return [name, *cells]

    rows = [
        row("labeller", lambda r: str(r["source"].get("model") or "-")),
        row("pairs scored", lambda r: str(r["n_scored"])),
        row("alignment", lambda r: with_ci(r["alignment"])),
        row("order AB alone", lambda r: with_ci(r["alignment_by_order"]["ab"])),
        row("order BA alone", lambda r: with_ci(r["alignment_by_order"]["ba"])),
        row("position bias (same slot)", lambda r: with_ci(r["position_bias"]["same_slot"])),
        row("P(prefer first)", lambda r: pct(r["position_bias"]["p_first"])),
        row("labeller picks longer", lambda r: with_ci(r["length_bias"]["ai_picks_longer"])),
        row("humans pick longer", lambda r: with_ci(r["length_bias"]["human_picks_longer"])),
        row("Brier", lambda r: f"{r['calibration']['brier']:.3f}"),
        row("ECE", lambda r: f"{r['calibration']['ece']:.3f}"),
        row("option mass (mean)", lambda r: pct(r["option_mass"]["mean"])),
        row("always longer", lambda r: with_ci(r["baselines"]["always_longer"])),
    ]
    principles = sorted({pid for r in reports.values() for pid in r.get("by_principle", {})})
    rows += [row(f"principle: {pid}", lambda r, pid=pid: with_ci(r["by_principle"][pid])) for pid in principles]
    return rows


def compare_reports(directories: list[str | Path]) -> tuple[str, str]:
    """The reports in `directories` side by side: (terminal table, markdown)."""
    if len(directories) < 1:
        raise RlaifError("--compare needs at least one report directory: rlaif align --compare DIR1 DIR2 ...")
    reports = {str(d): load_report(d) for d in directories}
    head = ["", *reports]
    rows = compare_rows(reports)
    widths = [max(len(str(line[i])) for line in [head, *rows]) for i in range(len(head))]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *rows])
    markdown = "\n".join(["# AI labeller alignment: comparison", "", *_md_table(head, rows)]) + "\n"
    return text, markdown
