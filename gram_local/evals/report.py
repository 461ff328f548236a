"""Eval results as tables: Markdown for --report, aligned plain text for the terminal.

Both are rendered from the JSON result (what --json prints), so a report can be rebuilt from a saved
result without the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gram_local.evals.data import RMBENCH_STYLES

PAPER_LABEL = "GRAM-RR-3B (paper)"
DASH = "—"


def _num(value: Any, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _pct(fraction: Any) -> str:
    return DASH if fraction is None else f"{100.0 * fraction:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    def fmt(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if k == 0 else cell.rjust(width) for k, (cell, width) in enumerate(zip(row, widths)))
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(row) for row in rows)])


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out.extend(_flat(inner, f"{prefix}{key}."))
        return out
    return [(prefix[:-1], value)]


def _model_line(result: Mapping[str, Any]) -> str:
    model = result.get("model") or {}
    what = model.get("name") or model.get("path") or "unknown model"
    sha = str(model.get("sha256") or "")[:12]
    return (
        f"Model: {what} (sha256 {sha}…, {model.get('quantization') or 'unknown quantization'}). "
        f"The paper column is GRAM-RR-LLaMA-3.2-3B as published: compare only when this model is that one."
    )


def _settings_lines(result: Mapping[str, Any]) -> list[str]:
    return [f"- {key}: {value}" for key, value in _flat(result.get("settings", {}))]


def _position_block(position: Mapping[str, Any], *, markdown: bool, unit: str) -> str:
    rows = [
        [f"{unit}s judged in both orders", str(position["pairs_both_orders"])],
        ["same verdict in both orders (consistency)", f"{position['consistent']} ({_pct(position['consistency'])})"],
        [
            "judgments picking the response shown first",
            f"{position['first_shown_preferred']} of {position['judgments']} ({_pct(position['first_shown_rate'])})",
        ],
    ]
    return table(["position", "value"], rows, markdown=markdown)


def _calibration_block(cal: Mapping[str, Any], *, markdown: bool) -> str:
    rows = [
        [f"{b['low']:.1f}–{b['high']:.1f}", str(b["n"]), _num(b["confidence"], 3), _num(b["accuracy"], 3)]
        for b in cal["buckets"]
    ]
    head = f"ECE {_num(cal['ece'], 3)}, Brier {_num(cal['brier'], 3)}, {cal['n']} judgments (confidence = max(p_a, 1 - p_a))"
    return head + "\n\n" + table(["confidence", "judgments", "mean confidence", "accuracy"], rows, markdown=markdown)


def _run_block(run: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- results file: {run['out']}",
        (
            f"- this run: {run['judged']} judged ({run['failed']} failed), {run['skipped']} already done, "
            f"{_num(run['wall_seconds'], 1)} s wall"
        ),
    ]
    if run.get("wall_seconds_per_pair") is not None:
        lines.append(f"- wall time per judged pair (both orders) this run: {_num(run['wall_seconds_per_pair'], 2)} s")
    if run.get("mean_judge_seconds_per_pair") is not None:
        lines.append(f"- mean judge time per pair over all stored results: {_num(run['mean_judge_seconds_per_pair'], 2)} s")
    if run.get("interrupted"):
        lines.append("- the run was interrupted: scores cover the results stored so far; unjudged items count as failed")
    return lines


def judgebench_report(result: Mapping[str, Any], *, markdown: bool = True) -> str:
    scores = result["scores"]
    paper = scores["paper"]
    rows = []
    for name, cat in scores["categories"].items():
        rows.append([name, str(cat["n"]), str(cat["correct"]), _num(cat["accuracy"]), _num(paper.get(name))])
    total_correct = sum(c["correct"] for c in scores["categories"].values())
    rows.append(["category mean (GRAM papers)", "", "", _num(scores["category_mean"]), _num(paper.get("category_mean"))])
    rows.append(["overall, pair-weighted (official)", str(scores["pairs"]), str(total_correct), _num(scores["overall"]), DASH])
    notes = [
        (
            f"- pairs: {scores['pairs']}; without a result (counted wrong): {scores['failed']}; "
            f"inconsistent across orders (score 0, counted wrong): {scores['inconsistent']}"
        ),
    ]
    if scores["missing_categories"]:
        notes.append(f"- categories with no pairs here: {', '.join(scores['missing_categories'])} (left out of the category mean)")
    if result.get("limit_per_category"):
        notes.append(f"- --limit {result['limit_per_category']}: only the first pairs of each category, not comparable with the paper")
    h = "## " if markdown else ""
    parts = [
        f"{'# ' if markdown else ''}JudgeBench, split {result['split']}",
        _model_line(result),
        table(["category", "pairs", "correct", "ours %", PAPER_LABEL], rows, markdown=markdown),
        "\n".join(notes),
        f"{h}Position",
        _position_block(scores["position"], markdown=markdown, unit="pair"),
        f"{h}Calibration of p_a",
        _calibration_block(scores["calibration"], markdown=markdown),
        f"{h}Run",
        "\n".join(_run_block(result["run"]) + [f"- data: {result['data']}"]),
        f"{h}Settings",
        "\n".join(_settings_lines(result)),
    ]
    return "\n\n".join(parts) + "\n"


def rmbench_report(result: Mapping[str, Any], *, markdown: bool = True) -> str:
    scores = result["scores"]
    paper = scores["paper"]
    rows = []
    for name, dom in scores["domains"].items():
        rows.append(
            [name, str(dom["items"]), _num(dom["hard"]), _num(dom["normal"]), _num(dom["easy"]), _num(dom["score"]), _num(paper.get(name))]
        )
    rows.append(
        [
            "overall", str(scores["items"]), _num(scores["hard"]), _num(scores["normal"]), _num(scores["easy"]),
            _num(scores["overall"]), _num(paper.get("overall")),
        ]
    )
    bias_rows = [[name, _num(dom["chosen_first"]), _num(dom["chosen_second"])] for name, dom in scores["domains"].items()]
    bias_rows.append(["mean", _num(scores["chosen_first"]), _num(scores["chosen_second"])])
    notes = [f"- prompts: {scores['items']}; cells: {scores['cells']}; cells without a result (counted wrong): {scores['failed_cells']}"]
    if scores["missing_domains"]:
        notes.append(
            f"- domains missing from the data: {', '.join(scores['missing_domains'])}: overall, hard, normal and easy are "
            "means over the domains present, not comparable with the paper's overall"
        )
    partial = [s for s in scores["missing_sources"] if s.startswith("safety") and "safety" in scores["domains"]]
    if partial:
        notes.append(f"- the safety domain lacks {', '.join(partial)}")
    if result.get("limit_per_domain"):
        notes.append(f"- --limit {result['limit_per_domain']}: only the first prompts of each domain file, not comparable with the paper")
    h = "## " if markdown else ""
    parts = [
        f"{'# ' if markdown else ''}RM-Bench",
        _model_line(result),
        table(["domain", "prompts", "hard %", "normal %", "easy %", "score %", PAPER_LABEL], rows, markdown=markdown),
        "\n".join(notes),
        f"{h}Order: accuracy of each single order (%)",
        table(["domain", "chosen shown first", "chosen shown second"], bias_rows, markdown=markdown),
    ]
    if markdown:
        parts.append("## Style matrices (%): rows chosen style, columns rejected style")
        for name, dom in scores["domains"].items():
            matrix_rows = [[RMBENCH_STYLES[i], *(_num(v) for v in row)] for i, row in enumerate(dom["matrix"])]
            parts.append(f"{name}\n\n" + table(["chosen \\ rejected", *RMBENCH_STYLES], matrix_rows, markdown=True))
    parts += [
        f"{h}Position",
        _position_block(scores["position"], markdown=markdown, unit="cell"),
        f"{h}Calibration of p_a",
        _calibration_block(scores["calibration"], markdown=markdown),
        f"{h}Run",
        "\n".join(_run_block(result["run"]) + [f"- data: {', '.join(result['data'])}"]),
        f"{h}Settings",
        "\n".join(_settings_lines(result)),
    ]
    return "\n\n".join(parts) + "\n"


def render(result: Mapping[str, Any], *, markdown: bool = True) -> str:
    if result["benchmark"] == "judgebench":
        return judgebench_report(result, markdown=markdown)
    return rmbench_report(result, markdown=markdown)
