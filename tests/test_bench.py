"""The benchmark runner: its workload shape, its counters, and prefix sharing on a real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gram_local.bench import OPERATIONS, fit_text, parse_operations, unique_prompt_tokens
from gram_local.cli.bench import bench_command
from gram_local.errors import InputError


def test_unique_prompt_tokens_is_the_prefix_trie_size() -> None:
    prompts = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [1, 2, 3, 4], [7]]
    # Trie nodes: 1, 1-2, 1-2-3, 1-2-3-4, 1-2-3-5, 1-2-9, 7.
    assert unique_prompt_tokens(prompts) == 7
    assert unique_prompt_tokens([[5, 6, 7]] * 8) == 3
    assert unique_prompt_tokens([]) == 0


def test_fit_text_hits_the_exact_count_and_is_deterministic() -> None:
    def count(text: str) -> int:  # a toy tokenizer: words, plus one token per full stop
        return len(text.split()) + text.count(".")

    text = fit_text(count, 57, seed=3)
    assert count(text) == 57
    assert text == fit_text(count, 57, seed=3)
    assert text != fit_text(count, 57, seed=4)
    assert text[-1].isalpha() and text[0].isupper()


def test_operations_parse_in_canonical_order() -> None:
    assert parse_operations("rank-8, compare") == ["compare", "rank-8"]
    assert parse_operations(",".join(OPERATIONS)) == list(OPERATIONS)
    with pytest.raises(InputError):
        parse_operations("compare,sort")


@pytest.mark.slow
def test_bench_json_on_smollm2(smollm2_path: Path) -> None:
    """The whole workload, shrunk (4 think tokens, short texts): fields, exact budgets, sharing.

    One thread: on a shared 2-core machine two llama.cpp threads wait on each other at every barrier.
    """
    args = [
        "--model", str(smollm2_path), "--json", "--think-tokens", "4",
        "--question-tokens", "12", "--response-tokens", "24", "--threads", "1",
    ]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert report["workload"]["think_tokens"] == 4
    assert report["workload"]["reference"] is False
    assert report["load_seconds"] >= 0
    ops = {op["name"]: op for op in report["operations"]}
    assert list(ops) == list(OPERATIONS)
    expected_judgments = {"compare": 1, "swap": 2, "vote": 8, "best-of-8": 7, "rank-8": 28}
    per_judgment = report["prompt_tokens_per_judgment"]
    for name, op in ops.items():
        assert op["judgments"] == expected_judgments[name], name
        # Every judgment had exactly the budgeted think tokens, closed by the budget.
        assert op["think_tokens_exact"] is True, name
        assert op["think_tokens_min"] == op["think_tokens_max"] == 4, name
        assert op["generated_tokens"] == 4 * op["judgments"], name
        assert op["prompt_tokens_total"] == per_judgment * op["judgments"], name
        # Every operation prefilled and decoded something, inside its wall time; the rates are
        # those times' rates of the counts above, not numbers of their own.
        assert 0 < op["prefill_seconds"] and 0 < op["decode_seconds"], name
        assert op["prefill_seconds"] + op["decode_seconds"] <= op["wall_seconds"], name
        assert 0 <= op["grammar_seconds"] < op["wall_seconds"], name
        assert op["prefill_tokens_per_s"] == pytest.approx(op["prompt_tokens_evaluated"] / op["prefill_seconds"]), name
        assert op["decode_tokens_per_s"] == pytest.approx(op["generated_tokens"] / op["decode_seconds"]), name
        assert op["grammar_share"] == pytest.approx(op["grammar_seconds"] / op["decode_seconds"]), name
        assert op["grammar_ms_per_token"] == pytest.approx(1000 * op["grammar_seconds"] / op["generated_tokens"]), name
        assert op["wall_vs_compare"] == pytest.approx(op["wall_seconds"] / ops["compare"]["wall_seconds"]), name
        # A perfect cache is the floor: nothing evaluates fewer than the unique tokens.
        assert op["prompt_tokens_evaluated"] >= op["prompt_tokens_unique"], name

    # Each operation is measured cold: one compare evaluates its whole prompt.
    assert ops["compare"]["prompt_tokens_evaluated"] == per_judgment
    assert ops["compare"]["wall_vs_compare"] == 1.0
    # The eight votes share one prompt; prefix sharing keeps the multi-pair operations near the floor.
    assert ops["vote"]["prompt_tokens_unique"] == per_judgment
    for name in ("vote", "best-of-8", "rank-8"):
        assert ops[name]["prompt_tokens_evaluated"] <= 1.2 * ops[name]["prompt_tokens_unique"], name
        assert ops[name]["prompt_tokens_unique"] < ops[name]["prompt_tokens_total"], name

    summary = report["summary"]
    assert summary["all_think_tokens_exact"] is True
    assert summary["swap_vs_compare"] == ops["swap"]["wall_vs_compare"]
    assert summary["rank_8_evaluated_over_unique"] == ops["rank-8"]["evaluated_over_unique"]

    # The memory it took: the vote ran 8 sequences, each holding the prompt and the think budget.
    memory = report["memory"]
    assert memory["kv_streams"] >= 8 and memory["kv_cells_per_stream"] >= per_judgment + 4
    assert memory["kv_bytes"] > 0 and memory["peak_rss_bytes"] > memory["kv_bytes"]


def test_bench_refuses_options_that_change_the_workload(smollm2_path: Path) -> None:
    result = CliRunner().invoke(bench_command, ["--model", str(smollm2_path), "--temperature", "0.3"])
    assert result.exit_code == 2
    assert "--temperature" in result.output and "fixed workload" in result.output
