"""Run outcomes (ok / partial / failed), exit codes, never losing a saved dataset, and retrying what failed.

Real runs through the CLI: the shipped human-preferences pipeline, and a generation pipeline on the openai backend
against a real HTTP server on 127.0.0.1 whose answers are a pure function of the request (so a retried record gets
exactly the answer an uninterrupted run got).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from scripted import ScriptedBackend
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import ConfigError
from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import recover_dataset, write_dataset
from rlaif.pipeline.run import RunFailed, run_pipeline
from rlaif.pipeline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
PROMPTS = [f"prompt number {i}" for i in range(12)]


def cli(*args: str) -> Any:
    return runner.invoke(app, ["run", *map(str, args), "--no-progress"], catch_exceptions=False)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def saved(dataset: Path) -> list[dict]:
    return [row for f in sorted((dataset / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


# -- a real HTTP server -------------------------------------------------------------------------------------------
Rule = Callable[[str], int]  # prompt text -> HTTP status to answer with (200: a completion)


class Server:
    """An OpenAI-compatible chat server on 127.0.0.1. ``status(prompt)`` decides each answer; a 200 answer is
    ``answer(prompt, seed, i)``, so any record gets the same completion whenever it is asked."""

    def __init__(self, status: Rule = lambda _prompt: 200) -> None:
        self.status = status
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.prompts.append(prompt)
                code = server.status(prompt)
                if code == 200:
                    choices = [
                        {"index": i, "message": {"role": "assistant", "content": answer(prompt, body["seed"], i)},
                         "finish_reason": "stop"}
                        for i in range(body["n"])
                    ]  # fmt: skip
                    payload = {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 2 * body["n"]}}
                else:
                    payload = {"error": {"message": f"status {code} for {prompt}"}}
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Server:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def take(self) -> list[str]:
        with self.lock:
            prompts, self.prompts = self.prompts, []
        return prompts


def answer(prompt: str, seed: int, i: int) -> str:
    return f"answer {i} to {prompt} (seed {seed})"


def generation_pipeline(tmp_path: Path, url: str, extra: str = "") -> Path:
    records = ", ".join(f"{{prompt: '{p}'}}" for p in PROMPTS)
    path = tmp_path / "gen.yaml"
    path.write_text(
        "name: gen\nseed: 3\n"
        "models:\n"
        f"  policy: {{backend: openai, model: m, base_url: '{url}', max_retries: 1, timeout_s: 20,"
        " temperature: 0.7, max_tokens: 8}\n"
        "steps:\n"
        f"  - {{name: seeds, type: inline, records: [{records}]}}\n"
        "  - {name: responses, type: generate_responses, from: seeds, model: policy, n: 2, batch_size: 4}\n"
        "  - {name: kept, type: expression, from: responses, where: 'len(responses) == 2', batch_size: 5}\n"
        f"{extra}"
        f"output: {{save: '{tmp_path / 'dataset'}'}}\n"
    )
    return path


def by_prompt(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["prompt"])


# -- item 1 and 2: outcomes, exit codes, the previous dataset kept -------------------------------------------------
def test_a_failed_run_keeps_the_previous_dataset_and_says_why(tmp_path):
    """The reported sequence: a good human_prefs run, then the same run with the wrong format."""
    shipped = REPO / "pipelines" / "human_prefs.yaml"
    common = [f"--run-dir={tmp_path / 'run'}", f"output.save={tmp_path / 'dataset'}"]
    good = cli(shipped, *common)
    assert good.exit_code == 0, good.output
    assert "run partial" in good.output  # the sample holds malformed transcripts; within its max_quarantined
    before = tree(tmp_path / "dataset")
    assert {"README.md", "train.jsonl"} <= set(before) and any(k.startswith("data/") for k in before)

    bad = cli(shipped, *common, "steps.human.format=ultrafeedback")
    assert bad.exit_code == 1, bad.output
    last = bad.output[bad.output.index("run failed") :]  # the outcome is printed last
    assert "step 'human' failed: all 10 of its records were quarantined" in last
    assert str(tmp_path / "run" / "quarantine" / "human.jsonl") in last
    assert "missing field" in last and "no 'instruction' field" in last  # the reason with one example detail
    assert f"dataset not replaced: {tmp_path / 'dataset'}" in last
    assert tree(tmp_path / "dataset") == before  # byte for byte
    # The failed step is not cached: the next run with the same mistake does it again and fails again, and a
    # failed run is never accepted, --allow-partial or not.
    again = cli(shipped, *common, "steps.human.format=ultrafeedback", "--allow-partial")
    assert again.exit_code == 1 and "cached" not in again.output
    assert tree(tmp_path / "dataset") == before


def test_card_and_data_match_after_every_accepted_run(tmp_path):
    with Server() as server:
        path = generation_pipeline(tmp_path, server.url)
        for overrides in ([], ["steps.kept.where=len(prompt) < 16"]):
            result = cli(path, f"--run-dir={tmp_path / 'run'}", *overrides)
            assert result.exit_code == 0, result.output
            rows = saved(tmp_path / "dataset")
            card = (tmp_path / "dataset" / "README.md").read_text()
            assert f"train: {len(rows)} rows" in card
    assert len(rows) == 10  # "prompt number 10" and "11" are 16 characters


def test_a_step_whose_every_record_fails_exits_1_and_is_not_cached(tmp_path):
    with Server(lambda _prompt: 400) as server:
        path = generation_pipeline(tmp_path, server.url)
        first = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert first.exit_code == 1, first.output
        assert "run failed" in first.output and "step 'responses' failed: all 12" in first.output
        assert "generation failed — 12 records (permanent)" in first.output
        assert "not run after the failure: kept" in first.output
        assert not (tmp_path / "dataset").exists() and "no dataset saved" in first.output
        assert not (tmp_path / "run" / "steps" / "responses" / "COMPLETE").exists()
        assert len(server.take()) == 12

        server.status = lambda _prompt: 200  # the cause is fixed: the failed step runs again, not "cached (0)"
        second = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert second.exit_code == 0, second.output
        assert "responses" not in [line.split()[0] for line in second.output.splitlines() if "cached" in line]
        assert len(server.take()) == 12 and len(saved(tmp_path / "dataset")) == 12
        assert second.output.rstrip().splitlines()[-1] == "run ok"


def test_a_step_raising_type_error_on_every_record_is_a_permanent_failure(tmp_path):
    """What a bad config value does (the report: temperature=hot, `step raised TypeError` on all 16 records)."""

    def respond(text: str, params: Any) -> str:
        raise TypeError("'<' not supported between instances of 'str' and 'float'")

    class Raising(ScriptedBackend):
        def generate(self, prompts, params):  # noqa: ANN001, ANN202
            return [self._one(p, params) for p in prompts]

        def _one(self, prompt, params):  # noqa: ANN001, ANN202
            return respond(prompt, params)

    path = generation_pipeline(tmp_path, "http://127.0.0.1:9/v1")
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", backends={"policy": Raising(respond)})
    stats = summary.stats["responses"]
    assert stats["failed"] and stats["quarantined"] == {"step raised TypeError": 12} and stats["transient"] == 0
    assert summary.outcome.status == "failed" and summary.outcome.exit_code == 1 and not summary.datasets
    assert summary.outcome.reasons[0].example.startswith("'<' not supported")
    rows = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "responses.jsonl").open()]
    assert len(rows) == 12 and not any(row["transient"] for row in rows)
    with pytest.raises(RunFailed, match="step 'responses' failed"):
        summary.check()


def test_partial_runs_are_accepted_under_max_quarantined_or_with_allow_partial(tmp_path):
    failing = {PROMPTS[1], PROMPTS[6]}  # 2 of 12 = 16.7%, permanent (HTTP 400)
    with Server(lambda prompt: 400 if prompt in failing else 200) as server:
        path = generation_pipeline(tmp_path, server.url)
        over = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert over.exit_code == 1, over.output
        assert "run partial (not accepted)" in over.output and "above max_quarantined 0.1" in over.output
        assert "--allow-partial" in over.output and not (tmp_path / "dataset").exists()

        step_limit = cli(path, f"--run-dir={tmp_path / 'run'}", "steps.responses.max_quarantined=0.2")
        assert step_limit.exit_code == 0 and "within max_quarantined 0.2" in step_limit.output
        assert len(saved(tmp_path / "dataset")) == 10

        strict = cli(path, f"--run-dir={tmp_path / 'run'}", "max_quarantined=0.01", "--allow-partial")
        assert strict.exit_code == 0 and "run partial" in strict.output
        assert sorted(server.take()) == sorted(PROMPTS)  # only the first run asked; the others reused its work


def test_max_quarantined_is_validated_with_file_and_line(tmp_path):
    path = generation_pipeline(tmp_path, "http://127.0.0.1:9/v1", extra="max_quarantined: 2\n")
    with pytest.raises(ConfigError, match=r"gen\.yaml:\d+: max_quarantined must be a share between 0 and 1"):
        load_pipeline(path)
    with pytest.raises(ConfigError, match="max_quarantined must be a share"):
        load_pipeline(generation_pipeline(tmp_path, "http://127.0.0.1:9/v1"), ["steps.kept.max_quarantined=yes"])


# -- item 3: retry what failed, keep what succeeded ----------------------------------------------------------------
def test_a_server_that_fails_then_recovers_rerun_retries_only_the_failed_records(tmp_path):
    with Server() as server:
        reference = tmp_path / "reference"
        reference.mkdir()
        path = generation_pipeline(reference, server.url)
        assert cli(path, f"--run-dir={reference / 'run'}").exit_code == 0
        uninterrupted = saved(reference / "dataset")
        server.take()

        down = {PROMPTS[2], PROMPTS[5], PROMPTS[11]}  # in batches 0, 1 and 2 of the generation step
        server.status = lambda prompt: 503 if prompt in down else 200
        path = generation_pipeline(tmp_path, server.url)
        first = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert first.exit_code == 1, first.output  # 3 of 12 quarantined: above the default 0.1
        assert "generation failed — 3 records (3 transient)" in first.output
        assert "re-run to retry them" in first.output
        assert sorted(server.take()) == sorted(PROMPTS)  # max_retries: 1, one attempt each
        quarantine = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "responses.jsonl").open()]
        assert len(quarantine) == 3 and all(row["transient"] for row in quarantine)
        assert all(
            row["detail"].startswith("policy: transient error: gave up on /chat/completions") for row in quarantine
        )

        server.status = lambda _prompt: 200  # the server is back
        second = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert second.exit_code == 0, second.output
        assert sorted(server.take()) == sorted(down)  # only the failed records were asked again
        assert "responses: retried 3 quarantined records" in second.output
        assert by_prompt(saved(tmp_path / "dataset")) == by_prompt(uninterrupted)
        assert "train: 12 rows" in (tmp_path / "dataset" / "README.md").read_text()  # the card matches the data
        stats = json.loads((tmp_path / "run" / "stats.json").read_text())
        for s in stats.values():  # exact accounting across the retry
            assert s["records_in"] == s["records_out"] + sum(s["dropped"].values()) + sum(s["quarantined"].values())
        assert stats["responses"]["records_out"] == 12 and stats["responses"]["retried"] == 3
        assert stats["kept"]["records_in"] == 12 and stats["kept"]["records_out"] == 12
        assert not (tmp_path / "run" / "quarantine").exists()

        third = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert third.exit_code == 0 and server.take() == []  # all finished: nothing redone
        assert all(f"{name:<20} cached" in third.output for name in ("seeds", "responses", "kept"))


def test_permanent_failures_are_kept_until_retry_quarantined(tmp_path):
    flaky = {PROMPTS[4]}
    with Server(lambda prompt: 400 if prompt in flaky else 200) as server:
        path = generation_pipeline(tmp_path, server.url)
        first = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert first.exit_code == 0, first.output  # 1 of 12 = 8.3%: within 0.1
        assert len(server.take()) == 12 and len(saved(tmp_path / "dataset")) == 11

        server.status = lambda _prompt: 200
        plain = cli(path, f"--run-dir={tmp_path / 'run'}")
        assert plain.exit_code == 0 and server.take() == []  # a permanent failure is not retried by itself

        everything = cli(path, f"--run-dir={tmp_path / 'run'}", "--retry-quarantined")
        assert everything.exit_code == 0, everything.output
        assert server.take() == [PROMPTS[4]]
        assert len(saved(tmp_path / "dataset")) == 12 and everything.output.rstrip().endswith("run ok")


def test_transient_failures_that_persist_are_retried_on_every_run_and_never_cached(tmp_path):
    down = {PROMPTS[0]}
    with Server(lambda prompt: 503 if prompt in down else 200) as server:
        path = generation_pipeline(tmp_path, server.url)
        for _ in range(2):
            result = cli(path, f"--run-dir={tmp_path / 'run'}")
            assert result.exit_code == 0, result.output  # 1 of 12: partial, accepted
            assert "1 transient" in result.output
            assert not (tmp_path / "run" / "steps" / "responses" / "COMPLETE").exists()
        assert sorted(server.take()) == sorted([*PROMPTS, PROMPTS[0]])
        assert len(saved(tmp_path / "dataset")) == 11


# -- the dataset swap ----------------------------------------------------------------------------------------------
def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    target = tmp_path / "ds"
    write_dataset({"train": [[{"prompt": "a", "chosen": "b", "rejected": "c"}]]}, target, DatasetCardInfo("t", ""))
    before = tree(target)
    old = tmp_path / ".ds.old-x1"
    target.rename(old)  # what a kill after the first rename of a later save leaves
    assert recover_dataset(target) and tree(target) == before and not old.exists()
    assert not recover_dataset(target)  # nothing to do when the dataset is in place


def test_a_step_raising_a_connection_error_is_transient_and_retried_in_its_batch(tmp_path):
    """A backend that raises (not an error result) for some prompts: the runner isolates the records, classifies
    ConnectionError as transient and TypeError as permanent, and a re-run retries only the transient ones."""
    raises: dict[str, Exception] = {PROMPTS[9]: ConnectionError("refused"), PROMPTS[3]: TypeError("bad value")}
    seen: list[str] = []

    class Raising(ScriptedBackend):
        def generate(self, prompts, params):  # noqa: ANN001, ANN202
            texts = [p[-1]["content"] for p in prompts]
            seen.extend(texts)
            for text in texts:
                if text in raises:
                    raise raises[text]
            return super().generate(prompts, params)

    backend = Raising(lambda text, params: f"ok {text} {params.seed}")
    path = generation_pipeline(tmp_path, "http://127.0.0.1:9/v1", extra="max_quarantined: 0.5\n")
    first = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", backends={"policy": backend})
    stats = first.stats["responses"]
    assert stats["quarantined"] == {"step raised ConnectionError": 1, "step raised TypeError": 1}
    assert stats["transient"] == 1 and first.outcome.status == "partial" and first.outcome.accepted
    assert len(saved(tmp_path / "dataset")) == 10

    raises.clear()
    seen.clear()
    second = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", backends={"policy": backend})
    assert seen == [PROMPTS[9]]  # the TypeError record stays quarantined: permanent
    assert second.stats["responses"]["quarantined"] == {"step raised TypeError": 1}
    assert second.stats["responses"]["transient"] == 0 and second.stats["responses"]["retried"] == 1
    assert second.stats["kept"]["records_in"] == 11 and len(saved(tmp_path / "dataset")) == 11
    # the retry ran with its batch's seed: the answer equals the one a first pass would have given
    rows = {row["prompt"]: row["responses"][0].split()[-1] for row in saved(tmp_path / "dataset")}
    assert rows[PROMPTS[9]] == rows[PROMPTS[10]] != rows[PROMPTS[0]]  # batch 2's seed, not batch 0's


def test_a_retry_killed_before_its_marker_is_redone(tmp_path):
    down = {PROMPTS[1]}
    with Server(lambda prompt: 503 if prompt in down else 200) as server:
        path = generation_pipeline(tmp_path, server.url)
        assert cli(path, f"--run-dir={tmp_path / 'run'}").exit_code == 0
        step = tmp_path / "run" / "steps" / "responses"
        # What a kill during a retry leaves: the retry's files, but the batch's marker still says no retry happened.
        (step / "batch-000000.r01.parquet").write_bytes((step / "batch-000000.parquet").read_bytes())
        server.status = lambda _prompt: 200
        server.take()
        assert cli(path, f"--run-dir={tmp_path / 'run'}").exit_code == 0
        assert server.take() == [PROMPTS[1]]
        rows = saved(tmp_path / "dataset")
        assert sorted(row["prompt"] for row in rows) == sorted(PROMPTS)  # no duplicate from the stale file


def test_which_failures_are_transient():
    from rlaif.backends.base import TransientBackendError, is_transient_exception, is_transient_reason, transient

    class EngineDeadError(Exception):  # vLLM's, matched by name: no vllm import needed to classify it
        pass

    assert all(map(is_transient_exception, [TimeoutError(), ConnectionRefusedError(), EngineDeadError()]))
    assert is_transient_exception(TransientBackendError("server unreachable"))
    assert not any(map(is_transient_exception, [TypeError(), KeyError("instruction"), ValueError(), OSError()]))
    marked = transient("engine died: EngineDeadError")
    assert transient(marked) == marked and is_transient_reason(f"judge: response 1: {marked}")
    assert not is_transient_reason("HTTP 400 from /chat/completions (not retried): bad request")
