"""PNG plots of an eval result (the optional `plot` extra: matplotlib).

Two pictures answer the two questions a reader has: how do we compare with the paper per category,
and can p_a be read as a probability (confidence against accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gram_local.errors import PlotUnavailableError
from gram_local.evals.report import PAPER_LABEL


def require_matplotlib() -> None:
    """Fail fast, before hours of judging, when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib, from the plot extra: pip install 'gram-local[plot]'"
        ) from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _categories(result: Mapping[str, Any]) -> tuple[list[str], list[float | None], list[float | None]]:
    scores = result["scores"]
    paper = scores["paper"]
    if result["benchmark"] == "judgebench":
        names = list(scores["categories"])
        ours = [scores["categories"][n]["accuracy"] for n in names]
        names.append("category mean")
        ours.append(scores["category_mean"])
        theirs = [paper.get(n) for n in names[:-1]] + [paper.get("category_mean")]
    else:
        names = list(scores["domains"])
        ours = [scores["domains"][n]["score"] for n in names]
        names.append("overall")
        ours.append(scores["overall"])
        theirs = [paper.get(n) for n in names]
    return names, ours, theirs


def plot_result(result: Mapping[str, Any], folder: Path) -> list[Path]:
    """Write `<benchmark>-categories.png` and `<benchmark>-calibration.png` into `folder`."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    bench = result["benchmark"]
    written: list[Path] = []

    names, ours, theirs = _categories(result)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(names))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [v or 0.0 for v in ours], width, label="ours")
    ax.bar([x + width / 2 for x in xs], [v or 0.0 for v in theirs], width, label=PAPER_LABEL)
    ax.set_xticks(list(xs), names, rotation=15)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{bench}: accuracy by {'category' if bench == 'judgebench' else 'domain'}")
    ax.legend()
    fig.tight_layout()
    path = folder / f"{bench}-categories.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    buckets = [b for b in result["scores"]["calibration"]["buckets"] if b["n"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in buckets], [b["accuracy"] for b in buckets], marker="o", label="ours")
    for b in buckets:
        ax.annotate(str(b["n"]), (b["confidence"], b["accuracy"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence max(p_a, 1 - p_a)")
    ax.set_ylabel("accuracy")
    ece = result["scores"]["calibration"]["ece"]
    ax.set_title(f"{bench}: calibration (ECE {ece:.3f})" if ece is not None else f"{bench}: calibration")
    ax.legend(loc="best")
    fig.tight_layout()
    path = folder / f"{bench}-calibration.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written
