"""`gram-local eval` end to end with the model-free judge on small hand-made benchmark files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from batch_fakes import FakeJudge, Interrupting
from click.testing import CliRunner

import gram_local.cli.evals as cli_evals
from gram_local.batch import load_records

# The fake prefers the longer response, in both orders. Labels below make it right or wrong on purpose.
JUDGEBENCH_ROWS = [
    # (source, longer response is the labelled better one?)
    ("mmlu-pro-law", True),
    ("mmlu-pro-physics", True),
    ("mmlu-pro-history", False),
    ("livebench-reasoning", True),
    ("livebench-reasoning", False),
    ("livebench-math", True),
    ("livecodebench", False),
    ("livecodebench", False),
]


def write_judgebench(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
    rows = []
    for k, (source, longer_wins) in enumerate(JUDGEBENCH_ROWS):
        a_longer = k % 2 == 0
        rows.append({
            "pair_id": f"pair-{k}",
            "original_id": str(k),
            "source": source,
            "question": f"question {k}",
            "response_model": "gpt-4o-2024-05-13",
            "response_A": "long response A" if a_longer else "A",
            "response_B": "B" if a_longer else "long response B",
            "label": "A>B" if a_longer == longer_wins else "B>A",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_rmbench(folder: Path) -> Path:
    """Chosen styles are 4/8/12 characters, rejected 3/7/11: the fake is right exactly when i >= j."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = ["c" * 4, "c" * 8, "c" * 12]
    rejected = ["r" * 3, "r" * 7, "r" * 11]
    for source, ids in (("chat", [8, 12]), ("safety-refuse", [8])):
        items = [{"id": i, "prompt": f"prompt {i}", "chosen": chosen, "rejected": rejected, "subset": "x"} for i in ids]
        (folder / f"{source}_filtered.json").write_text(json.dumps(items))
    return folder


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"opened": 0, "judge": FakeJudge()}

    def open_fake(opts: dict[str, Any], **_: Any) -> FakeJudge:
        state["opened"] += 1
        return state["judge"]

    monkeypatch.setattr(cli_evals, "open_judge", open_fake)
    return state


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_evals.eval_group, list(args))


def test_judgebench_scores_report_and_resume(tmp_path: Path, fake: dict[str, Any]) -> None:
    data = write_judgebench(tmp_path / "jb")
    out = tmp_path / "jb.jsonl"
    report = tmp_path / "report.md"
    result = invoke("judgebench", "--data", str(data.parent), "-o", str(out), "--json", "--report", str(report))
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]
    assert {k: v["correct"] for k, v in scores["categories"].items()} == {"knowledge": 2, "reasoning": 1, "math": 1, "coding": 0}
    assert scores["overall"] == pytest.approx(50.0)
    assert scores["category_mean"] == pytest.approx((200 / 3 + 50 + 100 + 0) / 4)
    assert scores["position"]["consistency"] == 1.0 and scores["paper"]["knowledge"] == 93.0
    records = load_records(out)
    assert len(records) == 8 and all(len(r["judgments"]) == 2 for r in records.values())
    assert all(r["run_settings"]["eval"] == {"benchmark": "judgebench"} for r in records.values())
    text = report.read_text()
    assert "| category mean (GRAM papers) |  |  | 54.2 | 80.3 |" in text
    assert "overall, pair-weighted (official)" in text and "ECE" in text
    assert "Model: fake (sha256 ffffffffffff…, F16)" in text

    again = invoke("judgebench", "--data", str(data), "-o", str(out))
    assert again.exit_code == 0, again.output
    assert "8 task(s) already done" in again.stderr
    assert "category mean (GRAM papers)" in again.stdout and "54.2" in again.stdout


def test_judgebench_limit_is_per_category(tmp_path: Path, fake: dict[str, Any]) -> None:
    data = write_judgebench(tmp_path / "jb")
    result = invoke("judgebench", "--data", str(data), "-o", str(tmp_path / "o.jsonl"), "--limit", "1", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert {k: v["n"] for k, v in body["scores"]["categories"].items()} == {"knowledge": 1, "reasoning": 1, "math": 1, "coding": 1}
    assert body["limit_per_category"] == 1 and body["run"]["judged"] == 4


def test_rmbench_domains_matrix_and_missing(tmp_path: Path, fake: dict[str, Any]) -> None:
    folder = write_rmbench(tmp_path / "rm")
    out = tmp_path / "rm.jsonl"
    result = invoke("rm-bench", "--data", str(folder), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]
    assert list(scores["domains"]) == ["chat", "safety"]
    for domain in scores["domains"].values():
        assert (domain["hard"], domain["normal"], domain["easy"]) == (0.0, 100.0, 100.0)
    assert scores["overall"] == pytest.approx(600 / 9)
    assert scores["missing_domains"] == ["math", "code"] and "safety-response" in scores["missing_sources"]
    assert len(load_records(out)) == 27

    text = invoke("rm-bench", "--data", str(folder / "chat_filtered.json"), "-o", str(tmp_path / "chat.jsonl"))
    assert text.exit_code == 0, text.output
    assert "domains missing from the data: math, code, safety" in text.stdout
    only = invoke("rm-bench", "--data", str(folder), "--domain", "safety", "-o", str(tmp_path / "s.jsonl"), "--json")
    assert list(json.loads(only.stdout)["scores"]["domains"]) == ["safety"]
    absent = invoke("rm-bench", "--data", str(folder), "--domain", "math", "-o", str(tmp_path / "m.jsonl"))
    assert absent.exit_code == 2 and "no RM-Bench items for math" in absent.stderr


def test_plots_are_written_or_refused_up_front(tmp_path: Path, fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_rmbench(tmp_path / "rm")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
        refused = invoke("rm-bench", "--data", str(folder), "-o", str(tmp_path / "o.jsonl"), "--plot", str(tmp_path / "png"))
    assert refused.exit_code == 2 and "pip install 'gram-local[plot]'" in refused.stderr
    assert fake["opened"] == 0, "the model must not load when the plots cannot be made"
    pytest.importorskip("matplotlib")
    made = invoke("rm-bench", "--data", str(folder), "-o", str(tmp_path / "o.jsonl"), "--plot", str(tmp_path / "png"))
    assert made.exit_code == 0, made.output
    for name in ("rm-bench-categories.png", "rm-bench-calibration.png"):
        assert (tmp_path / "png" / name).read_bytes().startswith(b"\x89PNG")


def test_interrupted_eval_exits_130_without_scores(tmp_path: Path, fake: dict[str, Any]) -> None:
    data = write_judgebench(tmp_path / "jb")
    out = tmp_path / "jb.jsonl"
    fake["judge"] = Interrupting(after=5)
    result = invoke("judgebench", "--data", str(data), "-o", str(out), "--json", "--chunk-size", "1")
    assert result.exit_code == 130 and result.stdout == ""
    assert "rerun the same command to resume" in result.stderr
    assert len(load_records(out)) == 2  # 5 generations: two whole pairs
    fake["judge"] = FakeJudge()
    assert invoke("judgebench", "--data", str(data), "-o", str(out)).exit_code == 0
    assert len(load_records(out)) == 8


def test_data_from_the_hub_or_a_clear_error(tmp_path: Path, fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    data = write_judgebench(tmp_path / "jb")
    asked: list[dict[str, Any]] = []

    def fetched(**kwargs: Any) -> str:
        asked.append(kwargs)
        return str(data)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetched)
    assert invoke("judgebench", "-o", str(tmp_path / "o.jsonl")).exit_code == 0
    assert asked == [{"repo_id": "ScalerLab/JudgeBench", "filename": "data/gpt-00000-of-00001.jsonl", "repo_type": "dataset"}]

    def offline(**kwargs: Any) -> str:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    result = invoke("rm-bench", "-o", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 1
    assert "total_dataset.json from the hub dataset THU-KEG/RM-Bench (Network is unreachable)" in result.stderr
    assert "--data PATH" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = invoke("judgebench", "--data", str(empty), "-o", str(tmp_path / "o.jsonl"))
    assert missing.exit_code == 2 and "no JudgeBench gpt-4o file" in missing.stderr
    other_split = invoke("judgebench", "--data", str(data), "--split", "claude", "-o", str(tmp_path / "o.jsonl"))
    assert other_split.exit_code == 2 and "pass the matching --split" in other_split.stderr
