"""`--backend openai` against a loopback stub of vLLM's schema (see tests/vllm_stub.py): which grammar
field each vLLM version gets, replies verified to follow the format, P(A) from the answer slot."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_stub import LOGPROB_A, LOGPROB_B, RATIONALE, VllmStub

from gram_local import connect_judge
from gram_local.backend import GenerationRequest, SamplerSpec
from gram_local.config import JudgeSettings, RemoteSettings
from gram_local.errors import BackendError
from gram_local.remote.base import Think, check_think_reply
from gram_local.remote.openai import grammar_field, parse_version

QUESTION, A, B = "What is 2+2?", "4", "5"


@pytest.fixture
def stub(request: pytest.FixtureRequest, smollm2_path: Path) -> Iterator[VllmStub]:
    server = VllmStub(str(smollm2_path), **getattr(request, "param", {}))
    yield server
    server.close()


def openai_judge(model: Path, url: str, budget: int = 64) -> Any:
    return connect_judge(model, backend="openai", settings=JudgeSettings(max_think_tokens=budget),
                         remote=RemoteSettings(base_urls=(url,), retries=0))


@pytest.mark.parametrize(("text", "n_tokens", "ok"), [
    ("reasons</think>\n<answer>\n", 3, True),    # closed at the end: the answer slot comes next
    ("reasons cut by the budget", 8, True),       # the budget ended it, nothing closed
    ("reasons</think>\n<ans", 8, True),          # the budget cut the closing itself
    ("stopped early", 3, False),                  # an end of generation before the budget: no grammar
    ("a</think> then more text", 8, False),       # a closing inside the text
    ("a</think>\n<answer>\nA</think>\n<answer>\n", 8, False),  # two closings
])
def test_a_think_reply_must_follow_the_grammar(text: str, n_tokens: int, ok: bool) -> None:
    request = GenerationRequest(prompt=[1], sampler=SamplerSpec(), max_think_tokens=8)
    think = Think(tokens=list(range(n_tokens)), stopped="eos")
    if ok:
        check_think_reply(text, think, request)
    else:
        with pytest.raises(BackendError, match="did not enforce the reply format"):
            check_think_reply(text, think, request)


def test_versions_choose_the_grammar_field() -> None:
    assert parse_version("0.10.1.1") == (0, 10, 1) and parse_version("0.11.0rc2") == (0, 11, 0)
    assert parse_version("v1") is None
    assert grammar_field((0, 8, 0)) == grammar_field((0, 10, 1)) == "guided_grammar"  # vLLM 0.8.0 - 0.10.1
    assert grammar_field((0, 10, 2)) == grammar_field((0, 12, 0)) == "structured_outputs"  # from vLLM 0.10.2
    assert grammar_field((0, 7, 3)) is None and grammar_field((1, 0, 0)) is None


@pytest.mark.parametrize(("stub", "field"), [({"version": "0.10.1.1"}, "guided_grammar"), ({"version": "0.12.0"}, "structured_outputs")],
                         indirect=["stub"])
def test_each_version_gets_its_grammar_field_and_p_a_comes_from_the_answer_slot(stub: VllmStub, field: str,
                                                                                smollm2_path: Path) -> None:
    judge = openai_judge(smollm2_path, stub.url)
    try:
        result = judge.compare(QUESTION, A, B, swap=True)
    finally:
        judge.close()
    think = [body for body in stub.completions if body["max_tokens"] > 1]
    assert len(think) == 2 and all(field in body for body in think)
    assert all(("guided_grammar" in body) == (field == "guided_grammar") for body in think)
    assert all(isinstance(body["prompt"], list) for body in stub.completions)  # token ids, never the texts
    expected = 1.0 / (1.0 + math.exp(LOGPROB_B - LOGPROB_A))
    assert [j.p_a for j in result.judgments] == pytest.approx([expected, 1.0 - expected])  # the BA order shows b first
    assert all(j.rationale == RATIONALE + "\n" and not j.forced_close for j in result.judgments)
    server = result.settings["server"]
    assert server["server_version"] == stub.version and server["grammar_field"] == field


@pytest.mark.parametrize("stub", [{"version": "0.12.0", "honour_grammar": False}], indirect=True)
def test_a_reply_that_ignores_the_grammar_is_an_error_not_a_verdict(stub: VllmStub, smollm2_path: Path) -> None:
    judge = openai_judge(smollm2_path, stub.url)
    try:
        with pytest.raises(BackendError, match="did not enforce the reply format"):
            judge.compare(QUESTION, A, B)
    finally:
        judge.close()


@pytest.mark.parametrize("stub", [{"version": "0.10.1"}], indirect=True)
def test_the_budget_forces_the_closing_before_the_answer_slot(stub: VllmStub, smollm2_path: Path) -> None:
    judge = openai_judge(smollm2_path, stub.url, budget=4)
    try:
        result = judge.compare(QUESTION, A, B)
    finally:
        judge.close()
    judgment = result.judgments[0]
    assert judgment.forced_close and judgment.think_tokens == 4
    answer_prompt = stub.completions[-1]["prompt"]
    assert stub.vocab.detokenize(answer_prompt).endswith("</think>\n<answer>\n")


@pytest.mark.parametrize("stub", [{"version": "0.7.3"}, {"version": "1.0.0"}, {"version": "banana"}], indirect=True)
def test_an_unknown_version_is_refused(stub: VllmStub, smollm2_path: Path) -> None:
    with pytest.raises(BackendError, match="not a vLLM version gram-local knows"):
        openai_judge(smollm2_path, stub.url)


@pytest.mark.parametrize("stub", [{"answer_in_top": False}], indirect=True)
def test_a_or_b_missing_from_the_top_logprobs_is_an_error(stub: VllmStub, smollm2_path: Path) -> None:
    judge = openai_judge(smollm2_path, stub.url)
    try:
        with pytest.raises(BackendError, match="A or B is not among"):
            judge.compare(QUESTION, A, B)
    finally:
        judge.close()


def test_a_server_of_another_vocabulary_is_refused(tiny_llama3_gguf: Path, smollm2_path: Path) -> None:
    other = VllmStub(str(tiny_llama3_gguf))
    try:
        with pytest.raises(BackendError, match="serves another model"):
            openai_judge(smollm2_path, other.url)
    finally:
        other.close()


@pytest.mark.parametrize("stub", [{"version": "0.11.0"}], indirect=True)
def test_the_cli_judges_through_replicas_given_by_the_environment(stub: VllmStub, smollm2_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from gram_local.cli.app import main

    second = VllmStub(str(smollm2_path), version="0.11.0")
    try:
        env = {"GRAM_LOCAL_BASE_URL": f"{stub.url} {second.url}", "GRAM_LOCAL_API_KEY": "k"}
        args = ["compare", "-q", QUESTION, "-a", A, "-b", B, "--swap", "--json", "--model", str(smollm2_path),
                "--backend", "openai", "--max-think-tokens", "64"]
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        record = json.loads(result.output.strip().splitlines()[-1])
        assert record["settings"]["server"]["base_urls"] == [stub.url, second.url]
        assert record["winner"] in ("a", "b", "tie")
    finally:
        second.close()


def test_a_base_url_without_a_remote_backend_is_a_usage_error(smollm2_path: Path) -> None:
    from click.testing import CliRunner

    from gram_local.cli.app import main

    result = CliRunner().invoke(main, ["compare", "-q", QUESTION, "-a", A, "-b", B, "--model", str(smollm2_path),
                                       "--base-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--base-url needs --backend" in result.output


@pytest.mark.parametrize("stub", [{"delay": 5.0}], indirect=True)
def test_a_cancelled_request_ends_at_once_and_its_reply_is_dropped(stub: VllmStub, smollm2_path: Path) -> None:
    from gram_local.backend import GenerationRequest, RequestState

    judge = openai_judge(smollm2_path, stub.url)
    backend = judge.backend
    handle = backend.submit(GenerationRequest(prompt=judge.prompt(QUESTION, A, B).tokens, max_think_tokens=8))
    handle.cancel()
    backend.wait([handle], timeout=2.0)  # the server answers only after 5 s
    assert handle.state is RequestState.CANCELLED and handle.generation is None
    judge.close()
    assert handle.generation is None


@pytest.mark.parametrize("stub", [{"version": "0.10.2"}], indirect=True)
def test_eval_judgebench_runs_unchanged_on_a_server(stub: VllmStub, smollm2_path: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from test_eval_cli import write_judgebench

    import gram_local.cli.evals as cli_evals

    data = write_judgebench(tmp_path / "jb")
    out = tmp_path / "jb.jsonl"
    args = ["judgebench", "--data", str(data.parent), "-o", str(out), "--limit", "2", "--json", "--model", str(smollm2_path),
            "--backend", "openai", "--base-url", stub.url, "--max-think-tokens", "64"]
    result = CliRunner().invoke(cli_evals.eval_group, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["status"] == "ok" for r in records)
    assert all(r["run_settings"]["server"]["grammar_field"] == "structured_outputs" for r in records)
    assert len([b for b in stub.completions if b["max_tokens"] > 1]) == 2 * len(records)  # both orders of each pair
