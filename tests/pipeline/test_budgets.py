"""Token and cost budgets per model (rlaif.pipeline.budget): a run that reaches one stops between batches, keeps
what it finished, says which budget stopped it, exits 3, leaves the saved dataset alone, and a re-run with a higher
budget continues from the cache to the same rows as an unbudgeted run. Tokens and cost per model and step reach
stats.json, the report and the dataset card.

The scripted backend answers a pure function of the prompt and the batch's seed; the CLI test runs the real openai
backend against an HTTP server on 127.0.0.1 that reports usage like a hosted API.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from scripted import ScriptedBackend
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import ConfigError
from rlaif.pipeline.run import RunFailed, run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.report import render

PROMPTS = [f"write line number {i} of the poem" for i in range(16)]  # 4 batches of 4


def pipeline_file(tmp_path: Path, seed: int = 3, models: str = "", url: str = "http://127.0.0.1:9/v1") -> Path:
    records = ", ".join(f"{{prompt: '{p}'}}" for p in PROMPTS)
    path = tmp_path / "budget.yaml"
    path.write_text(
        f"name: budget\nseed: {seed}\n"
        "models:\n"
        "  policy:\n"
        "    backend: openai\n"
        "    model: m\n"
        f"    base_url: '{url}'\n"
        "    max_retries: 1\n"
        "    max_tokens: 8\n"
        f"{models}"
        "steps:\n"
        f"  - {{name: seeds, type: inline, records: [{records}]}}\n"
        "  - {name: responses, type: generate_responses, from: seeds, model: policy, n: 2, batch_size: 4}\n"
        "  - {name: kept, type: expression, from: responses, where: 'len(responses) == 2', batch_size: 5}\n"
        f"output: {{save: '{tmp_path / 'dataset'}'}}\n"
    )
    return path


def scripted() -> ScriptedBackend:
    return ScriptedBackend(lambda text, params: [f"{text} / seed {params.seed} / take {i}" for i in range(params.n)])


def rows(dataset: Path) -> list[dict]:
    return [row for f in sorted((dataset / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def batch_tokens(run_dir: Path) -> list[int]:
    """Prompt + generated tokens of each batch of the generation step, from its completion markers."""
    markers = sorted((run_dir / "steps" / "responses").glob("batch-*.done"))
    return [sum(json.loads(m.read_text())["models"]["policy"].values()) for m in markers]


def test_a_budget_stops_between_batches_and_a_higher_one_resumes_to_the_unbudgeted_rows(tmp_path):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = run_pipeline(
        load_pipeline(pipeline_file(reference_dir)), run_dir=reference_dir / "run", backends={"policy": scripted()}
    )
    assert reference.outcome.status == "ok"
    expected = rows(reference_dir / "dataset")
    per_batch = batch_tokens(reference_dir / "run")
    assert len(per_batch) == 4 and len(expected) == 16
    stats = reference.stats["responses"]
    assert stats["models"] == {"policy": {"tokens_in": stats["tokens_in"], "tokens_out": stats["tokens_out"]}}
    assert "cost_usd" not in stats  # no price: tokens only

    # An earlier, different run saved a dataset at the same place: a stopped run must leave it as it is.
    path = pipeline_file(tmp_path, seed=4)
    assert run_pipeline(
        load_pipeline(path), run_dir=tmp_path / "old", backends={"policy": scripted()}
    ).outcome.accepted
    before = tree(tmp_path / "dataset")

    # The limit falls inside batch 1: batch 1 finishes (the spend passes the limit), batch 2 never starts.
    limit = per_batch[0] + per_batch[1] // 2
    path = pipeline_file(tmp_path)
    run_dir, backend = tmp_path / "run", scripted()
    stopped = run_pipeline(
        load_pipeline(path, [f"models.policy.budget.max_tokens={limit}"]),
        run_dir=run_dir,
        backends={"policy": backend},
        allow_partial=False,
    )
    outcome = stopped.outcome
    assert (outcome.status, outcome.accepted, outcome.exit_code) == ("stopped", False, 3)
    spent = per_batch[0] + per_batch[1]
    assert outcome.problems[0] == (
        f"budget reached: model 'policy' reached budget.max_tokens {limit} (spent {spent} tokens)"
    )
    assert "step 'responses' stopped between batches: 2 finished batches kept in the cache" in outcome.problems
    assert "not run after the stop: kept" in outcome.problems
    assert len(backend.calls) == 2 and "kept" not in stopped.stats
    markers = sorted(p.name for p in (run_dir / "steps" / "responses").glob("batch-*"))
    assert markers == ["batch-000000.done", "batch-000000.parquet", "batch-000001.done", "batch-000001.parquet"]
    assert not (run_dir / "steps" / "responses" / "COMPLETE").exists()
    assert stopped.stats["responses"]["budget_stop"] == {
        "model": "policy", "kind": "max_tokens", "limit": limit, "spent": spent
    }  # fmt: skip
    assert json.loads((run_dir / "stats.json").read_text())["responses"]["records_in"] == 8
    assert stopped.kept == [tmp_path / "dataset"] and not stopped.datasets
    assert tree(tmp_path / "dataset") == before  # byte for byte
    with pytest.raises(RunFailed, match="budget reached"):
        stopped.check()

    # The same budget again: the cached batches count, so nothing new starts (not even a request).
    backend = scripted()
    again = run_pipeline(
        load_pipeline(path, [f"models.policy.budget.max_tokens={limit}"]),
        run_dir=run_dir,
        backends={"policy": backend},
    )
    assert again.outcome.status == "stopped" and backend.calls == []
    assert tree(tmp_path / "dataset") == before

    # Raised to what batch 2 reaches: one more batch, then a stop again.
    backend = scripted()
    raised = sum(per_batch[:3])
    third = run_pipeline(
        load_pipeline(path, [f"models.policy.budget.max_tokens={raised}"]),
        run_dir=run_dir,
        backends={"policy": backend},
    )
    assert third.outcome.status == "stopped" and len(backend.calls) == 1
    assert third.stats["responses"]["budget_stop"]["spent"] == raised

    # Raised enough: the last batch runs and the rows equal the unbudgeted run's, row for row.
    backend = scripted()
    final = run_pipeline(
        load_pipeline(path, [f"models.policy.budget.max_tokens={sum(per_batch) + 1}"]),
        run_dir=run_dir,
        backends={"policy": backend},
        allow_partial=False,
    )
    assert final.outcome.status == "ok" and final.outcome.exit_code == 0 and len(backend.calls) == 1
    assert rows(tmp_path / "dataset") == expected
    assert final.stats["responses"]["models"] == stats["models"]  # the spend of the cached batches is kept
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "## Tokens and cost" in card and f"| all steps | policy | {stats['tokens_in']} |" in card


def test_cost_comes_from_the_prices_and_max_cost_usd_stops_the_run(tmp_path):
    price = "    price: {input_per_1m: 100, output_per_1m: 300}\n"
    path = pipeline_file(tmp_path, models=price)
    unlimited = run_pipeline(load_pipeline(path), run_dir=tmp_path / "priced", backends={"policy": scripted()})
    stats = unlimited.stats["responses"]
    usage = stats["models"]["policy"]
    cost = (usage["tokens_in"] * 100 + usage["tokens_out"] * 300) / 1e6
    assert usage["cost_usd"] == pytest.approx(cost) and stats["cost_usd"] == pytest.approx(cost) and cost > 0
    run_stats = json.loads((tmp_path / "priced" / "stats.json").read_text())
    assert run_stats["responses"]["models"]["policy"]["cost_usd"] == usage["cost_usd"]
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert f"| responses | policy | {usage['tokens_in']} | {usage['tokens_out']} | {cost:.6f} |" in card

    # The report's table (the report reads stats.json: a hostile model name stays text).
    run_stats["responses"]["models"]["<script>alert(1)</script>"] = {"tokens_in": 1, "tokens_out": 2}
    (tmp_path / "priced" / "stats.json").write_text(json.dumps(run_stats))
    html = render(tmp_path / "priced")
    assert "cost (USD)" in html and f"{cost:.6f}" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    # A cost limit at half the first batch's cost: the first batch finishes, the second never starts.
    batches = batch_tokens(tmp_path / "priced")
    first = json.loads(sorted((tmp_path / "priced" / "steps" / "responses").glob("batch-*.done"))[0].read_text())
    one = first["models"]["policy"]
    first_cost = (one["tokens_in"] * 100 + one["tokens_out"] * 300) / 1e6
    limited = run_pipeline(
        load_pipeline(path, [f"models.policy.budget.max_cost_usd={first_cost / 2}"]),
        run_dir=tmp_path / "limited",
        backends={"policy": scripted()},
    )
    stop = limited.stats["responses"]["budget_stop"]
    assert (stop["kind"], limited.outcome.exit_code) == ("max_cost_usd", 3)
    assert stop["spent"] == pytest.approx(first_cost)
    assert f"reached budget.max_cost_usd {first_cost / 2:g} (spent ${first_cost:.6f})" in limited.outcome.problems[0]
    assert len(batches) == 4 and limited.stats["responses"]["records_in"] == 4


BAD = [
    ("    budget: {max_tokens: -5}\n", r"budget\.yaml:10: model 'policy': max_tokens must be a positive integer"),
    ("    budget: {max_cost_usd: 2}\n", r"budget\.yaml:10: model 'policy': max_cost_usd needs the model's price"),
    (
        "    budget: {max_token: 100}\n",
        r"budget\.yaml:10: .*unknown budget key 'max_token' \(did you mean 'max_tokens'",
    ),
    ("    budget:\n      max_tokens: 0\n", r"budget\.yaml:11: model 'policy': max_tokens must be a positive integer"),
    ("    budget: {max_tokens: true}\n", r"budget\.yaml:10: .*max_tokens must be a positive integer .*got True"),
    ("    price: {input_per_1m: 0.15}\n", r"budget\.yaml:10: model 'policy': price needs output_per_1m"),
    ("    price: {input_per_1m: -1, output_per_1m: 1}\n", r"budget\.yaml:10: .*price needs input_per_1m: .*got -1"),
    (
        "    price: {input_per_m: 1, output_per_1m: 1, input_per_1m: 1}\n",
        r"unknown price key 'input_per_m' \(did you mean",
    ),
    ("    budjet: {max_tokens: 5}\n", r"budget\.yaml:10: .*unknown option 'budjet' .*\(did you mean 'budget'\?\)"),
    ("    budget: 500\n", r"budget\.yaml:10: model 'policy': budget must be a mapping like"),
]


@pytest.mark.parametrize(("lines", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_budgets_and_prices_are_errors_with_file_and_line(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(pipeline_file(tmp_path, models=lines))


def test_an_override_sets_a_budget_and_changing_it_keeps_the_cache(tmp_path):
    path = pipeline_file(tmp_path, models="    price: {input_per_1m: 0.15, output_per_1m: 0.60}\n")
    pipeline = load_pipeline(path, ["models.policy.budget.max_cost_usd=0.5"])
    budget = pipeline.budgets["policy"]
    assert (budget.max_cost_usd, budget.max_tokens, budget.price.output_per_1m) == (0.5, None, 0.6)
    from rlaif.pipeline.fingerprint import step_fingerprint

    other = load_pipeline(path, ["models.policy.budget.max_cost_usd=9"])
    spec, spec2 = pipeline.steps["responses"], other.steps["responses"]
    assert step_fingerprint(pipeline, spec, ["x"]) == step_fingerprint(other, spec2, ["x"])  # a budget is no cache key


# -- the real openai backend through the CLI -------------------------------------------------------------------------
class UsageServer:
    """An OpenAI-compatible chat server: 200 answers that are a function of the request, usage like a hosted API
    (prompt tokens: the prompt's words, completion tokens: 2 per choice). Counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.requests += 1
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": f"{prompt} {body['seed']} {i}"},
                     "finish_reason": "stop"}
                    for i in range(body["n"])
                ]  # fmt: skip
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": 2 * body["n"]}
                data = json.dumps({"choices": choices, "usage": usage}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> UsageServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_cli_on_the_openai_backend_stops_exits_3_and_resumes(tmp_path):
    cli = CliRunner()
    with UsageServer() as server:
        price = "    price: {input_per_1m: 0.15, output_per_1m: 0.60}\n"
        path = pipeline_file(tmp_path, models=price, url=server.url)
        # Per request: 7 prompt words + 2 choices x 2 tokens = 11 tokens; a batch of 4 prompts: 44.
        common = [str(path), f"--output-dir={tmp_path / 'run'}", "--no-progress"]
        stopped = cli.invoke(app, ["run", *common, "models.policy.budget.max_tokens=60"], catch_exceptions=False)
        assert stopped.exit_code == 3, stopped.output
        last = stopped.output[stopped.output.index("run stopped") :]
        assert "budget reached: model 'policy' reached budget.max_tokens 60 (spent 88 tokens)" in last
        assert (
            "2 finished batches kept" in last
            and "raise it and re-run (e.g. models.policy.budget.max_tokens=...)" in last
        )
        assert "no dataset saved" in last and server.requests == 8
        stats = json.loads((tmp_path / "run" / "stats.json").read_text())["responses"]
        assert stats["models"]["policy"] == {"tokens_in": 56, "tokens_out": 32, "cost_usd": pytest.approx(2.76e-05)}
        assert "cost (USD)" in (tmp_path / "run" / "report.html").read_text()

        done = cli.invoke(app, ["run", *common, "models.policy.budget.max_tokens=1000"], catch_exceptions=False)
        assert done.exit_code == 0, done.output
        assert server.requests == 16 and len(rows(tmp_path / "dataset")) == 16
        stats = json.loads((tmp_path / "run" / "stats.json").read_text())["responses"]
        assert stats["models"]["policy"]["tokens_in"] == 112 and stats["cost_usd"] == pytest.approx(5.52e-05)


# -- the real vLLM engine ---------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_the_vllm_engine_s_token_counts_stop_a_run_and_a_raised_budget_finishes_it(vllm_backend, tmp_path):
    """The shared engine's own token counts (prompt token ids, sampled ids) are what the budget counts."""
    shipped = Path(__file__).resolve().parents[2] / "pipelines" / "generate_responses.yaml"
    common = [
        "models.policy.max_tokens=4",
        "steps.seeds.limit=4",
        "steps.responses.batch_size=2",
        f"output.save={tmp_path / 'dataset'}",
    ]
    stopped = run_pipeline(
        load_pipeline(shipped, [*common, "models.policy.budget.max_tokens=1"]),
        run_dir=tmp_path / "run",
        backends={"policy": vllm_backend},
    )
    stats = stopped.stats["responses"]
    assert stopped.outcome.status == "stopped" and stats["records_in"] == 2  # the first batch, and no other
    usage = stats["models"]["policy"]
    assert usage == {"tokens_in": stats["tokens_in"], "tokens_out": stats["tokens_out"]}
    assert usage["tokens_in"] > 2 * 10 and 0 < usage["tokens_out"] <= 2 * 2 * 4
    assert stats["budget_stop"]["spent"] == usage["tokens_in"] + usage["tokens_out"]
    assert not (tmp_path / "dataset").exists()

    done = run_pipeline(
        load_pipeline(shipped, [*common, "models.policy.budget.max_tokens=100000"]),
        run_dir=tmp_path / "run",
        backends={"policy": vllm_backend},
    )
    assert done.outcome.status == "ok" and done.stats["responses"]["records_out"] == 4
    first = json.loads((tmp_path / "run" / "steps" / "responses" / "batch-000000.done").read_text())
    assert first["models"]["policy"] == usage  # batch 0 came from the cache, not generated again
    assert done.stats["responses"]["models"]["policy"]["tokens_in"] > usage["tokens_in"]
