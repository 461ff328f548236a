"""Batch judging with a fake judge: records, resume, retries, settings, force, shards, limits, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batch_fakes import TOO_LONG, FakeJudge, Interrupting
from click.testing import CliRunner
from fake_backend import ScriptedBackend

import gram_local.cli.batch as cli_batch
from gram_local.batch import (
    BatchUsageError,
    SettingsMismatchError,
    Task,
    TaskDefaults,
    id_key,
    load_records,
    parse_shard,
    parse_tasks,
    run_batch,
    select,
    shard_of,
)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "OUT must end with a whole line"
    return [json.loads(raw) for raw in data.split(b"\n") if raw]


def pairs(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "question": f"q{i}", "a": "x" * (i % 5 + 1), "b": "y" * 3} for i in range(start, start + n)]


MIXED = [
    {"id": "c1", "question": "q", "a": "long answer", "b": "short"},
    {"id": "c2", "question": "q", "a": "s", "b": "a longer one", "swap": True},
    {"id": "v1", "question": "q", "a": "aa", "b": "a", "votes": 3},
    {"id": "r1", "question": "q", "responses": ["a", "ccc", "bb"], "op": "rank", "method": "round-robin"},
    {"id": "n1", "question": "q", "responses": ["a", "ccc"], "op": "best-of-n", "swap": True},
    {"id": "long", "question": "q", "a": "fine", "b": TOO_LONG},
    {"id": "empty", "question": "q", "a": "", "b": "b"},
    '{"id": "broken", "question": ',
    {"id": "nofield", "question": "q", "a": "only a"},
    {"question": "no id here", "a": "aaa", "b": "b"},
]


# ------------------------------------------------------------------------------------------ parsing


def test_rows_parse_into_tasks_and_reasoned_errors() -> None:
    rows = [
        {"id": 1, "question": "q", "a": "a", "b": "b"},
        {"id": "r", "question": "q", "responses": ["x", "y"]},
        {"id": "r2", "question": "q", "responses": ["x"], "op": "rank"},
        {"id": "v", "question": "q", "a": "a", "b": "b", "votes": 2, "swap": True},
        {"id": "m", "question": "q", "a": "a", "b": "b", "method": "sort"},
        {"id": "o", "question": "q", "a": "a", "b": "b", "op": "judge"},
        {"id": ["bad"], "question": "q", "a": "a", "b": "b"},
        {"id": True, "question": "q", "a": "a", "b": "b"},
        {"id": "q", "a": "a", "b": "b"},
        [1, 2],
    ]
    data = ("\n".join(json.dumps(r) for r in rows) + "\n\nnot json\n").encode()
    tasks = parse_tasks(data)
    assert [t.error is None for t in tasks] == [True] + [False] * 10
    assert tasks[0].id == 1 and tasks[0].line == 1 and tasks[0].a == "a"
    reasons = [t.error for t in tasks[1:]]
    assert "needs 'op'" in reasons[0]
    assert "at least 2 responses" in reasons[1]
    assert "cannot be combined" in reasons[2]
    assert "rank only" in reasons[3]
    assert "'op' must be one of" in reasons[4]
    assert "'id' must be" in reasons[5] and "'id' must be" in reasons[6]
    assert "'question'" in reasons[7]
    assert "JSON object" in reasons[8]
    assert reasons[9].startswith("line 12: not valid JSON")  # the blank line 11 is skipped, not a row
    assert str(tasks[6].id).startswith("sha256:")  # a bad id still gets a stable id for its record


def test_rows_without_id_get_a_stable_content_id() -> None:
    row = {"question": "q", "a": "a", "b": "b"}
    first = parse_tasks((json.dumps(row) + "\n").encode())[0]
    other_row = json.dumps({"id": 7, "question": "z", "a": "a", "b": "b"})
    moved = parse_tasks(("\n" + other_row + "\n" + json.dumps(row, indent=None, separators=(",", ":"))).encode())[1]
    assert first.id == moved.id and str(first.id).startswith("sha256:") and len(str(first.id)) == 7 + 16
    other = parse_tasks((json.dumps({**row, "b": "c"}) + "\n").encode())[0]
    assert other.id != first.id


def test_defaults_resolve_op_swap_votes_and_method() -> None:
    plain = Task(id=1, question="q", a="a", b="b")
    assert plain.resolved(TaskDefaults()).op == "compare"
    assert plain.resolved(TaskDefaults(swap=True)).swap is True
    assert Task(id=1, question="q", a="a", b="b", swap=False).resolved(TaskDefaults(swap=True)).swap is False
    vote = plain.resolved(TaskDefaults(votes=5))
    assert (vote.op, vote.votes, vote.swap) == ("vote", 5, False)
    rank = Task(id=2, op="rank", question="q", responses=("a", "b")).resolved(TaskDefaults(method="round-robin"))
    assert rank.method == "round-robin"
    assert plain.resolved(TaskDefaults()).fingerprint != plain.resolved(TaskDefaults(swap=True)).fingerprint


def test_shards_partition_ids_stably() -> None:
    ids = [f"id-{i}" for i in range(300)] + list(range(50))
    tasks = [Task(id=i, question="q", a="a", b="b") for i in ids]
    shards = [select(tasks, shard=(i, 3)) for i in range(3)]
    keys = [t.key for shard in shards for t in shard]
    assert sorted(keys) == sorted(t.key for t in tasks)  # disjoint and complete
    assert all(60 < len(s) < 180 for s in shards)
    # SHA-256 of the JSON id: the same on every machine and Python (hash() is salted per process).
    assert [shard_of("id-0", 4), shard_of(0, 4), shard_of("0", 4)] == [2, 0, 3]
    assert select(tasks, shard=(1, 3), limit=5) == shards[1][:5]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(BatchUsageError):
            parse_shard(bad)


# ------------------------------------------------------------------------------------------ running


def test_mixed_batch_writes_one_record_per_id(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    judge = FakeJudge()
    summary = run_batch(judge, src, out, in_flight=8)
    assert summary.exit_code == 3 and summary.failed == 4 and summary.judged == 10
    records = {id_key(r["id"]): r for r in lines(out)}
    assert len(records) == 10 == len(lines(out))
    c1 = records['"c1"']
    assert c1["status"] == "ok" and c1["op"] == "compare" and c1["winner"] == "a" and len(c1["judgments"]) == 1
    assert set(c1["judgments"][0]) >= {"order", "answer", "prefers", "p_a", "rationale", "think_tokens", "forced_close"}
    assert c1["run_settings"]["model_sha256"] == "f" * 64 and c1["run_settings"]["batch"]["swap"] is False
    assert c1["model"]["sha256"] == "f" * 64 and len(c1["task_sha256"]) == 64
    assert [j["order"] for j in records['"c2"']["judgments"]] == ["AB", "BA"]
    assert records['"v1"']["op"] == "vote" and sum(records['"v1"']["votes"].values()) == 3
    assert records['"r1"']["op"] == "rank" and records['"r1"']["ranking"] == [1, 2, 0]
    assert records['"n1"']["best"] == 1
    errors = {k: r["error"] for k, r in records.items() if r["status"] == "error"}
    assert errors['"long"']["type"] == "ContextOverflowError" and "tokens" in errors['"long"']["message"]
    assert errors['"empty"']["type"] == "InputError"
    assert "'a' and 'b'" in errors['"nofield"']["message"]
    no_id = sorted((r for r in records.values() if str(r["id"]).startswith("sha256:")), key=lambda r: r["status"])
    broken, judged = no_id  # a row that is not JSON has no id either: it gets one from its raw text
    assert broken["line"] == 8 and broken["error"]["type"] == "InvalidRow"
    assert "line 8: not valid JSON" in broken["error"]["message"]
    assert judged["status"] == "ok" and judged["winner"] == "a"
    # Tasks of every kind reach the backend together, up to the in-flight limit.
    assert max(backend(judge).batch_sizes) > 1


def backend(judge: Any) -> ScriptedBackend:
    assert isinstance(judge.backend, ScriptedBackend)
    return judge.backend


def test_tasks_in_flight_never_exceed_the_limit(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(11))
    judge = FakeJudge()
    run_batch(judge, src, tmp_path / "out.jsonl", in_flight=4)
    sizes = backend(judge).batch_sizes
    assert max(sizes) == 4 and len(lines(tmp_path / "out.jsonl")) == 11


def test_resume_skips_done_ids_and_limit_takes_the_first(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(10))
    out = tmp_path / "out.jsonl"
    first = run_batch(FakeJudge(), src, out, limit=4)
    assert (first.selected, first.judged) == (4, 4)
    assert [r["id"] for r in lines(out)] == ["p0", "p1", "p2", "p3"]
    judge = FakeJudge()
    second = run_batch(judge, src, out)
    assert (second.skipped, second.judged, second.exit_code) == (4, 6, 0)
    assert backend(judge).finished == 6  # only the missing tasks were generated
    ids = [r["id"] for r in lines(out)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(10)) and len(ids) == 10
    third = run_batch(FakeJudge(), src, out)
    assert (third.skipped, third.judged) == (10, 0)


def test_failed_rows_are_retried_and_replaced_not_duplicated(tmp_path: Path) -> None:
    rows = pairs(3) + [{"id": "bad", "question": "q", "a": TOO_LONG, "b": "b"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run_batch(FakeJudge(), src, out).exit_code == 3
    again = run_batch(FakeJudge(), src, out)  # still failing: retried, still one record
    assert (again.judged, again.failed, again.exit_code) == (1, 1, 3)
    assert [r["id"] for r in lines(out)].count("bad") == 1
    write_jsonl(src, pairs(3) + [{"id": "bad", "question": "q", "a": "fixed", "b": "b"}])
    fixed = run_batch(FakeJudge(), src, out)
    assert (fixed.judged, fixed.failed, fixed.exit_code) == (1, 0, 0)
    records = lines(out)
    assert len(records) == 4 and next(r for r in records if r["id"] == "bad")["status"] == "ok"


def test_an_error_record_of_a_row_removed_from_the_input_goes_away(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(2) + ['{"broken'])
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out)
    assert len(lines(out)) == 3
    write_jsonl(src, pairs(2) + [{"id": "p9", "question": "q", "a": "a", "b": "b"}])
    assert run_batch(FakeJudge(), src, out).exit_code == 0
    assert sorted(r["id"] for r in lines(out)) == ["p0", "p1", "p9"]


def test_a_changed_task_is_judged_again(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(3))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out)
    rows = pairs(3)
    rows[1]["b"] = "a much longer response b"
    write_jsonl(src, rows)
    summary = run_batch(FakeJudge(), src, out)
    assert summary.judged == 1 and any("changed" in n for n in summary.notes)
    records = {r["id"]: r for r in lines(out)}
    assert len(lines(out)) == 3 and records["p1"]["winner"] == "b"


def test_other_settings_are_refused_naming_the_keys(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(3))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out, limit=2)
    before = out.read_bytes()
    with pytest.raises(SettingsMismatchError) as info:
        run_batch(FakeJudge(seed=1, max_think_tokens=64), src, out)
    assert set(info.value.differences) == {"seed", "max_think_tokens"}
    assert "seed: 0 in OUT, 1 now" in str(info.value) and info.value.exit_code == 2
    with pytest.raises(SettingsMismatchError) as info:
        run_batch(FakeJudge(), src, out, defaults=TaskDefaults(swap=True))
    assert set(info.value.differences) == {"batch.swap"}
    assert out.read_bytes() == before


def test_interrupt_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(10))
    out = tmp_path / "out.jsonl"
    summary = run_batch(Interrupting(after=4), src, out, in_flight=3)
    assert summary.interrupted and summary.exit_code == 130
    assert (summary.judged, summary.remaining) == (4, 6)
    assert len(lines(out)) == 4
    rest = run_batch(FakeJudge(), src, out)
    assert (rest.skipped, rest.judged, rest.exit_code) == (4, 6, 0)
    assert sorted(r["id"] for r in lines(out)) == sorted(f"p{i}" for i in range(10))


def test_force_replaces_out_only_when_complete_and_resumes_itself(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(8))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out)
    before = out.read_bytes()
    cut = run_batch(Interrupting(after=3, seed=5), src, out, force=True)
    assert cut.interrupted and out.read_bytes() == before
    assert any("out.jsonl is unchanged" in n for n in cut.notes)
    partial = tmp_path / "out.jsonl.new"
    assert len(lines(partial)) == 3
    plain = run_batch(FakeJudge(), src, out)  # a plain rerun keeps using OUT and mentions the forced run
    assert plain.judged == 0 and any("--force" in n for n in plain.notes)
    judge = FakeJudge(seed=5)
    done = run_batch(judge, src, out, force=True)
    assert (done.skipped, done.judged) == (3, 5) and any("continuing" in n for n in done.notes)
    assert not partial.exists()
    records = lines(out)
    assert len(records) == 8 and {r["run_settings"]["seed"] for r in records} == {5}
    # A forced run with yet other settings does not continue a stale forced file: it starts it over.
    run_batch(Interrupting(after=2, seed=6), src, out, force=True)
    again = run_batch(FakeJudge(seed=7), src, out, force=True)
    assert again.judged == 8 and {r["run_settings"]["seed"] for r in lines(out)} == {7}


def test_cut_last_line_is_dropped_and_a_whole_last_record_kept(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(4))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out, limit=3)
    data = out.read_bytes()
    records = data.split(b"\n")[:3]
    # The third record lost its newline only: it is whole, so kept; a half fourth line is dropped.
    out.write_bytes(records[0] + b"\n" + records[1] + b"\n" + records[2])
    summary = run_batch(FakeJudge(), src, out, limit=3)
    assert summary.judged == 0 and out.read_bytes() == data
    out.write_bytes(data + records[0][: len(records[0]) // 2])
    summary = run_batch(FakeJudge(), src, out)
    assert summary.judged == 1 and any("cut-off" in n for n in summary.notes)
    assert sorted(r["id"] for r in lines(out)) == ["p0", "p1", "p2", "p3"]


def test_duplicated_lines_in_out_keep_the_last(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(2))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out)
    first, second = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(first + second + first + b"garbage that is not a record\n")
    summary = run_batch(FakeJudge(), src, out)
    assert summary.judged == 0 and any("unreadable" in n for n in summary.notes)
    assert out.read_bytes() == second + first


def test_duplicate_ids_in_the_input(tmp_path: Path) -> None:
    row = {"id": "same", "question": "q", "a": "a", "b": "b"}
    src = write_jsonl(tmp_path / "in.jsonl", [row, row, {"question": "x", "a": "a", "b": "b"}, {"question": "x", "a": "a", "b": "b"}])
    summary = run_batch(FakeJudge(), src, tmp_path / "out.jsonl")
    assert summary.judged == 2 and sum("judged once" in n for n in summary.notes) == 2
    write_jsonl(src, [row, {**row, "b": "other"}])
    with pytest.raises(BatchUsageError, match="line 1 and line 2"):
        run_batch(FakeJudge(), src, tmp_path / "out2.jsonl")


def test_out_that_is_not_a_batch_file_is_left_alone(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(2))
    out = write_jsonl(tmp_path / "notes.jsonl", [{"hello": 1}, {"world": 2}])
    before = out.read_bytes()
    with pytest.raises(BatchUsageError, match="holds no gram-local batch records"):
        run_batch(FakeJudge(), src, out)
    assert out.read_bytes() == before
    with pytest.raises(BatchUsageError, match="OUT is the input file"):
        run_batch(FakeJudge(), src, src)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    import fcntl

    src = write_jsonl(tmp_path / "in.jsonl", pairs(2))
    out = tmp_path / "out.jsonl"
    with open(tmp_path / "out.jsonl.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(BatchUsageError, match="another gram-local batch"):
            run_batch(FakeJudge(), src, out)
    assert run_batch(FakeJudge(), src, out).judged == 2


class Crashing(ScriptedBackend):
    def _start(self, handle: Any) -> Any:
        if "[User Question]\nq3\n" in self.detokenize(handle.request.prompt):
            raise RuntimeError("engine failure")
        return super()._start(handle)


def test_runtime_failure_propagates_keeping_finished_work(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(6))
    out = tmp_path / "out.jsonl"
    judge = FakeJudge()
    judge.backend = judge.runner.backend = Crashing()
    with pytest.raises(RuntimeError):
        run_batch(judge, src, out, in_flight=1)
    assert [r["id"] for r in lines(out)] == ["p0", "p1", "p2"]
    assert run_batch(FakeJudge(), src, out).judged == 3


def test_records_survive_line_separators_inside_texts(tmp_path: Path) -> None:
    # The fake's rationale holds U+2028, which str.splitlines() would split on.
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "question": "q\u2028\x85", "a": "a\u2029", "b": "b"}])
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out)
    assert "\u2028" in out.read_text(encoding="utf-8")
    assert load_records(out)[id_key(1)]["status"] == "ok"
    assert run_batch(FakeJudge(), src, out).judged == 0


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    made: dict[str, Any] = {}

    def open_fake(opts: dict[str, Any], **_: Any) -> Any:
        made["opts"] = opts
        made["judge"] = FakeJudge(seed=opts["seed"], max_think_tokens=opts["max_think_tokens"])
        return made["judge"]

    monkeypatch.setattr(cli_batch, "open_judge", open_fake)
    return made


def test_cli_exit_codes_and_json_summary(tmp_path: Path, fake_cli: dict[str, Any]) -> None:
    runner = CliRunner()
    src = write_jsonl(tmp_path / "in.jsonl", pairs(3))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(cli_batch.batch_command, [str(src), "-o", str(out), "--json", "--swap"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["judged"] == 3 and summary["exit_code"] == 0
    assert all(len(r["judgments"]) == 2 for r in lines(out))
    assert fake_cli["opts"]["parallel"] == 8 and max(backend(fake_cli["judge"]).batch_sizes) == 6  # 3 tasks x 2 orders

    refused = runner.invoke(cli_batch.batch_command, [str(src), "-o", str(out), "--seed", "3"])
    assert refused.exit_code == 2 and "seed: 0 in OUT, 3 now" in refused.stderr and "Traceback" not in refused.output

    write_jsonl(src, pairs(3) + ["{oops"])
    failed = runner.invoke(cli_batch.batch_command, [str(src), "-o", str(out), "--swap"])
    assert failed.exit_code == 3 and "1 task(s) failed" in failed.stderr

    for args in (["--shard", "3/3"], ["--swap", "--votes", "3"]):
        bad = runner.invoke(cli_batch.batch_command, [str(src), "-o", str(tmp_path / "x.jsonl"), *args])
        assert bad.exit_code == 2, bad.output
    missing = runner.invoke(cli_batch.batch_command, [str(tmp_path / "nope.jsonl"), "-o", str(out)])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_cli_votes_and_shard(tmp_path: Path, fake_cli: dict[str, Any]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(12))
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.jsonl"
        result = CliRunner().invoke(cli_batch.batch_command, [str(src), "-o", str(out), "-k", "3", "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
        outs.append(lines(out))
    ids = [r["id"] for recs in outs for r in recs]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12))
    assert all(r["op"] == "vote" and len(r["judgments"]) == 3 for recs in outs for r in recs)


# ------------------------------------------------------------------------------------------ hardening


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("force", [False, True])
def test_cli_never_writes_over_its_own_input(tmp_path: Path, fake_cli: dict[str, Any], link: str, force: bool) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(3))
    before = src.read_bytes()
    out = src
    if link == "symlink":
        out = tmp_path / "out.jsonl"
        out.symlink_to(src)
    elif link == "hardlink":
        out = tmp_path / "out.jsonl"
        out.hardlink_to(src)
    result = CliRunner().invoke(cli_batch.batch_command, [str(src), "-o", str(out), *(["--force"] if force else [])])
    assert result.exit_code == 2, result.output
    assert "OUT is the input file" in result.stderr and "Traceback" not in result.output
    assert src.read_bytes() == before
    assert "judge" not in fake_cli  # refused before the model was loaded
    assert not (tmp_path / "in.jsonl.new").exists() and not (tmp_path / "out.jsonl.new").exists()


def test_a_repeated_invalid_row_is_reported_once(tmp_path: Path) -> None:
    bad = {"id": "bad", "question": "q", "a": "only a"}
    src = write_jsonl(tmp_path / "in.jsonl", [bad, bad, "{broken", "{broken", *pairs(2)])
    out = tmp_path / "out.jsonl"
    summary = run_batch(FakeJudge(), src, out)
    assert (summary.judged, summary.failed) == (4, 2)
    assert sum("reported once" in n for n in summary.notes) == 2
    assert not any("judged once" in n for n in summary.notes)
    assert len(lines(out)) == 4


@pytest.mark.parametrize("ignored", [False, True], ids=["ctrl-c", "sigint-ignored"])
def test_an_interrupt_held_during_a_write_is_counted_with_that_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     ignored: bool) -> None:
    """Held, then acted on as the process would have: a KeyboardInterrupt stops the batch after the
    record being written; a process that ignores SIGINT (started with nohup, or in the background
    of a script) keeps ignoring it and judges everything."""
    import os
    import signal

    import gram_local.batch.outfile as outfile

    real_write_all = outfile._write_all
    writes = {"n": 0}

    def write_all_then_ctrl_c(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        writes["n"] += 1
        if writes["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # held until the record is written and counted

    monkeypatch.setattr(outfile, "_write_all", write_all_then_ctrl_c)
    src = write_jsonl(tmp_path / "in.jsonl", pairs(6))
    out = tmp_path / "out.jsonl"
    # What Python installs in a terminal; a run in the background of a shell inherits SIG_IGN.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    try:
        summary = run_batch(FakeJudge(), src, out, in_flight=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    if ignored:
        assert not summary.interrupted and summary.judged == len(lines(out)) == 6
    else:
        assert summary.interrupted
        assert summary.judged == len(lines(out)) == 3
        assert summary.remaining == 3


def test_the_rewrite_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pairs(3))
    out = tmp_path / "out.jsonl"
    run_batch(FakeJudge(), src, out, limit=2)
    out.write_bytes(out.read_bytes() + b'{"id": "p2", "sta')  # a cut line: the next run rewrites OUT
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out.jsonl.rewrite").symlink_to(victim)
    summary = run_batch(FakeJudge(), src, out)
    assert victim.read_text() == "keep me"
    assert summary.judged == 1 and sorted(r["id"] for r in lines(out)) == ["p0", "p1", "p2"]
    assert not (tmp_path / "out.jsonl.rewrite").exists()
