"""`opengrok topics ...` and `opengrok pools` against a real on-disk Dagster instance."""

import pytest
import yaml
from dagster import DagsterInstance

from opengrok_dagster.cli import main


@pytest.fixture
def opengrok_home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the CLI defaults it to $OPENGROK_HOME/dagster_home
    return tmp_path


def test_topics_sync_add_list_remove(opengrok_home, capsys):
    assert main(["topics", "sync"]) == 0
    assert main(["topics", "add", "k-pop"]) == 0
    assert main(["topics", "remove", "football"]) == 0
    capsys.readouterr()
    assert main(["topics", "list"]) == 0
    assert capsys.readouterr().out.split() == ["climate", "smartphones", "k-pop"]
    written = yaml.safe_load((opengrok_home / "dagster_home" / "dagster.yaml").read_text())
    assert written["telemetry"] == {"enabled": False}
    assert written["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}  # gpu and teacher pools: 1


def test_pools_are_limited_when_the_instance_opens_and_an_operators_limit_is_kept(opengrok_home, capsys):
    assert main(["pools"]) == 0
    assert capsys.readouterr().out == "pool gpu: limit 1; pool teacher: limit 1\n"
    with DagsterInstance.from_config(str(opengrok_home / "dagster_home")) as instance:
        instance.event_log_storage.set_concurrency_slots("teacher", 3)  # `dagster instance concurrency set teacher 3`
    assert main(["topics", "list"]) == 0
    assert main(["pools"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pool gpu: limit 1; pool teacher: limit 3"


def test_invalid_topic_key_is_refused_without_traceback(opengrok_home, capsys):
    assert main(["topics", "add", "news/tech"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opengrok: error: topic key 'news/tech' contains '/'") and "Traceback" not in err


def test_removing_an_unknown_topic_names_it(opengrok_home):
    with pytest.raises(SystemExit, match="topic 'nope' is not a partition"):
        main(["topics", "remove", "nope"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--topics", "k-pop"], "--topics: 'k-pop' not a topic partition; add it with `opengrok topics add k-pop`"),
        (["--modes", "none,sparse"], "--modes: unknown mask mode(s) sparse; choose from none, paper, hard, soft"),
    ],
    ids=["unknown-topic", "unknown-mask-mode"],
)
def test_run_refuses_unknown_partitions_before_any_work(opengrok_home, capsys, arguments, message):
    assert main(["run", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opengrok: error: {message}") and "Traceback" not in err
    assert not (opengrok_home / "assets").exists()


def test_run_modes_come_from_the_profile_unless_modes_are_given(opengrok_home, tmp_path, capsys, monkeypatch):
    """cpu-demo trains none and soft (the 15-minute run); --modes wins; a profile naming an unknown mode is refused."""
    monkeypatch.setenv("OPENGROK_PROFILE", "cpu-demo")  # --profile sets it; monkeypatch unsets it after the test
    from opengrok_dagster.cli import build_parser
    from opengrok_dagster.cli.run import _checked_request

    parser = build_parser()
    assert _checked_request(parser.parse_args(["run"])).modes == ["none", "soft"]
    assert _checked_request(parser.parse_args(["run", "--modes", "hard,none"])).modes == ["hard", "none"]
    every = tmp_path / "every.yaml"
    every.write_text("description: every mode\n")
    assert _checked_request(parser.parse_args(["run", "--profile", str(every)])).modes == [
        "none",
        "paper",
        "hard",
        "soft",
    ]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("run_modes: [none, sparse]\n")
    assert main(["run", "--profile", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"opengrok: error: {wrong}: run_modes: unknown mask mode(s) sparse") and "Traceback" not in err
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "--round", "2026-13-01"], "--round '2026-13-01' is not a date: give the round as YYYY-MM-DD"),
        (["run", "--round", "yesterday"], "--round 'yesterday' is not a date"),
        (["run", "--round", "2026-1-5"], "--round '2026-1-5': write the date as YYYY-MM-DD (2026-01-05)"),
        (["run", "--round", "2999-01-01"], "--round 2999-01-01 is in the future"),
        (["run", "--round", "2025-12-31"], "--round 2025-12-31 is before the first round partition (2026-01-01)"),
        (["run", "--topics", "football,,climate"], "--topics 'football,,climate' has an empty item"),
        (["run", "--topics", "News/Tech"], "topic key 'News/Tech'"),
        (["run", "--modes", ""], "--modes '' has an empty item"),
        (["review", "accept", "zz-not-hex"], "'zz-not-hex' is not a content hash"),
        (["lineage", "no/such/dir"], "no example 'no/such/dir': a lineage target is an example_id (16 hex digits"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["review", "approve"], "argument action: invalid choice: 'approve'"),
    ],
    ids=[
        "month-13",
        "word-date",
        "unpadded",
        "future",
        "before-start",
        "empty-topic",
        "bad-topic-key",
        "empty-modes",
        "review-hash",
        "lineage-id",
        "unknown-flag",
        "unknown-action",
    ],
)
def test_every_cli_argument_is_validated_with_one_line_and_exit_2(opengrok_home, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(arguments))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opengrok: error: {message}") and err.count("\n") == 1 and "Traceback" not in err
    assert not (opengrok_home / "assets").exists() and not (opengrok_home / "dagster_home").exists()


def test_dry_run_prints_requests_tokens_and_usd_per_topic_and_sends_nothing(
    opengrok_home, capsys, monkeypatch, loopback_teacher
):
    monkeypatch.setenv("OPENGROK_TEACHER_BASE_URL", loopback_teacher.base_url)
    monkeypatch.setenv("OPENGROK_TEACHER_MODEL", "grok-test")
    monkeypatch.setenv("OPENGROK_TEACHER_MAX_TOKENS", "100")
    monkeypatch.setenv("OPENGROK_TEACHER_PROMPT_PRICE", "2")
    monkeypatch.setenv("OPENGROK_TEACHER_COMPLETION_PRICE", "10")
    assert main(["run", "--dry-run", "--round", "2026-11-24", "--topics", "climate,football"]) == 0
    out = capsys.readouterr().out
    assert loopback_teacher.requests == [] and not (opengrok_home / "assets").exists()
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| topic")
    }
    assert set(rows) == {"climate", "football", "total"}
    prompts, requests, prompt_tokens, completion_tokens, usd = rows["climate"]
    assert (prompts, requests, completion_tokens) == ("12", "12", "1200 / 1200")  # no history: expected = max
    assert float(usd.split(" / ")[1]) == pytest.approx((int(prompt_tokens) * 2 + 1200 * 10) / 1e6, abs=1e-4)
    assert rows["total"][1] == "24" and "nothing sent" in out and "~4 characters a token" in out


def test_dry_run_against_a_remote_url_without_a_model_names_the_variable(opengrok_home, capsys, monkeypatch):
    monkeypatch.setenv("OPENGROK_TEACHER_BASE_URL", "https://api.x.ai/v1")
    monkeypatch.delenv("OPENGROK_TEACHER_MODEL", raising=False)
    assert main(["run", "--dry-run"]) == 2
    assert "OPENGROK_TEACHER_BASE_URL is set but OPENGROK_TEACHER_MODEL is not" in capsys.readouterr().err


def test_run_on_a_broken_posts_file_prints_the_message_and_the_log_path_not_stack_frames(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    (tmp_path / "cut.jsonl").write_text('{"id": 1, "text": "hello there"}\n{"id": 2, "text": "cut off mid')
    (tmp_path / "posts.yaml").write_text(f"shards:\n  - key: mine\n    path: {tmp_path / 'cut.jsonl'}\n")
    env = {
        **os.environ,
        "OPENGROK_HOME": str(tmp_path / "home"),
        "OPENGROK_POSTS_CATALOGUE": str(tmp_path / "posts.yaml"),
        "OPENGROK_TEACHER_BASE_URL": "http://127.0.0.1:9/v1",  # never reached: the posts fail first
        "OPENGROK_TEACHER_MODEL": "grok-test",
        "XAI_API_KEY": "unused",
    }
    env.pop("DAGSTER_HOME", None)
    run = subprocess.run(
        [sys.executable, "-m", "opengrok_dagster.cli", "run", "--topics", "climate", "--modes", "none"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    terminal = run.stdout + run.stderr
    assert run.returncode == 1, terminal
    assert "opengrok: error: posts: posts shard mine: " in run.stderr
    assert "cut.jsonl line 2 is not a JSON object" in run.stderr
    for noise in ("Stack Trace", 'File "', "Traceback", "BetaWarning", "STEP_FAILURE", "RUN_FAILURE"):
        assert noise not in terminal, noise
    assert "[posts 1/1] shard 'mine': FAILED" in run.stdout  # the progress lines stay
    (log,) = (tmp_path / "home" / "logs").glob("opengrok-*.log")
    assert f"the full log is {log}" in run.stderr
    full = log.read_text()
    assert "step posts failed ===" in full and 'assets/posts.py", line' in full  # all of it is in the log


def test_a_crash_prints_its_traceback_and_a_failure_only_its_message(tmp_path, capsys):
    from dagster import Failure, asset, materialize

    from opengrok_dagster.cli.console import RunConsole
    from opengrok_dagster.layout import HomeLayout

    @asset
    def refused():
        raise Failure(description="shard x: cannot read x.jsonl; fix it")

    @asset
    def crashed():
        return {}["missing"]

    console = RunConsole(HomeLayout(tmp_path))
    printed = {}
    for step in (refused, crashed):
        with console.logging_to_file():
            result = materialize([step], raise_on_error=False)
            print("to the log, not the terminal")  # noqa: T201
        console.report_failure(result)
        captured = capsys.readouterr()
        assert "to the log" not in captured.out + captured.err
        assert captured.err.endswith(f"opengrok: the full log is {console.log_path}\n")
        printed[step.key.path[-1]] = captured.err
    assert printed["refused"].startswith("opengrok: error: refused: shard x: cannot read x.jsonl; fix it\n")
    assert 'File "' not in printed["refused"]  # a user's mistake: its message alone
    assert "KeyError: 'missing'" in printed["crashed"] and 'return {}["missing"]' in printed["crashed"]  # the stack
    assert "to the log, not the terminal" in console.log_path.read_text()


def test_a_remote_teacher_without_its_key_or_model_variable_is_one_line_before_any_run(
    opengrok_home, capsys, monkeypatch
):
    from tests.conftest import generative_only_profile

    monkeypatch.setenv("OPENGROK_PROFILE", str(generative_only_profile(opengrok_home)))
    monkeypatch.setenv("OPENGROK_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENGROK_TEACHER_MODEL", "grok-test")
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    assert main(["run", "--topics", "climate", "--collect-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opengrok: error: OPENGROK_TEACHER_BASE_URL is set but XAI_API_KEY, which holds the ")
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("XAI_API_KEY", "any")
    monkeypatch.delenv("OPENGROK_TEACHER_MODEL")  # read by Dagster as an EnvVar when the run starts
    assert main(["run", "--topics", "climate", "--collect-only"]) == 2
    err = capsys.readouterr().err
    assert 'environment variable "OPENGROK_TEACHER_MODEL" which is not set' in err and len(err.splitlines()) == 1
    assert err.startswith("opengrok: error: [collect 1/1] topic 'climate'")


def test_opengrok_run_drives_every_stage_job_in_the_asset_graphs_order():
    """`opengrok run` runs the jobs of jobs.py, each after the jobs that materialise what its assets read."""
    from dagster import AssetKey, DagsterInstance

    from opengrok_dagster.cli.pipeline import resolve_jobs, run_stages
    from opengrok_dagster.definitions import defs
    from opengrok_dagster.jobs import STAGE_JOBS

    with DagsterInstance.ephemeral() as instance:
        stages = run_stages(instance, ["climate"], "2026-11-24", ["none"], collect_only=False)
        collect_only = run_stages(instance, ["climate"], "2026-11-24", ["none"], collect_only=True)
    assert [stage.job for stage in stages] == [job.name for job in STAGE_JOBS]
    assert [stage.job for stage in collect_only] == ["load_posts", "collect_teacher_data"]
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    jobs = resolve_jobs(defs)
    materialised = set()
    for stage in stages:
        keys = {AssetKey(node) for node in jobs[stage.job].graph.node_names()}
        read = {dep.asset_key for key in keys for dep in specs[key].deps}
        assert read <= materialised | keys, f"{stage.job} reads {sorted(map(str, read - materialised - keys))}"
        materialised |= keys
    assert materialised == set(specs)  # every asset of the code location is materialised by `opengrok run`
