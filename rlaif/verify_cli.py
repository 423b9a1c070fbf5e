"""``rlaif verify FILE --verifier NAME``: grade a jsonl / json / Parquet file or a saved dataset directory with a
verifier (rlaif.verifiers) and print the pass rate with its 95% Wilson interval, the mean score (for ifeval: the
fraction of a response's constraints held) with its 95% Student t interval, the unverifiable responses by reason
and, for ``ifeval``, the pass rate of each constraint type; ``--out`` writes one result per response.

A row's response is its ``--response-column`` (default: the first of responses, response, completion, output,
messages): a string, a conversation (the last assistant message is graded), or a list of them (each is graded).
The verifier reads its own column (ifeval: constraints; math, exact: answer; regex: pattern); ``--answer-column``
names the file's column to read instead.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from rlaif.rates import Rate, mean_interval
from rlaif.verifiers import READS, Verdict, verifier_problem, verify

RESPONSE_COLUMNS = ("responses", "response", "completion", "output", "messages")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a jsonl / json / Parquet file, or of a saved dataset directory (Hub layout ``data/*.parquet``,
    a pipeline run directory, or ``Dataset.save_to_disk``). A jsonl line that is not a JSON object becomes a row
    ``{"_invalid": reason}`` (graded as unverifiable)."""
    if path.is_dir():
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            import datasets

            return list(datasets.load_from_disk(str(path)))
        root = path / "dataset" if (path / "dataset" / "data").is_dir() else path
        files = sorted((root / "data").glob("*.parquet")) or sorted(root.glob("*.parquet"))
        if not files:
            raise ValueError(f"{path}: no data/*.parquet files (a saved dataset or a pipeline run directory)")
        return [row for f in files for row in read_rows(f)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data.get("data", data.get("rows", [])) if isinstance(data, dict) else data
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError as exc:
                value = {"_invalid": f"invalid JSON at line {number}: {exc.msg}"}
            rows.append(value if isinstance(value, dict) else {"_invalid": f"line {number} is not a JSON object"})
    return rows


def _text(value: Any) -> str | None:
    """A response as text: a string, or a conversation's last assistant message (None when neither)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        replies = [m.get("content") for m in value if m.get("role") == "assistant"]
        return replies[-1] if replies and isinstance(replies[-1], str) else None
    return None


def responses_of(value: Any) -> list[str | None]:
    """The responses a cell holds: one (string or conversation) or a list of them."""
    many = isinstance(value, list) and value and all(isinstance(v, str) or _is_conversation(v) for v in value)
    if many and not all(isinstance(v, dict) for v in value):
        return [_text(v) for v in value]
    return [_text(value)]


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _prompt(row: dict[str, Any]) -> str:
    prompt = row.get("prompt", row.get("messages"))
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return "" if prompt is None else str(prompt)


def grade(
    rows: list[dict[str, Any]], name: str, response_column: str | None, answer_column: str | None
) -> list[dict[str, Any]]:
    """One result per response: ``{"row", "response_index", "score", "passed", "reason", "details"}``."""
    column = response_column or next((c for r in rows[:1] for c in RESPONSE_COLUMNS if c in r), RESPONSE_COLUMNS[1])
    target = READS.get(name, "answer")
    items, results = [], []
    for index, row in enumerate(rows):
        for position, text in enumerate(responses_of(row.get(column))):
            items.append((index, position, text, row))
    gradable = [item for item in items if item[2] is not None and "_invalid" not in item[3]]
    columns: dict[str, list] = {}
    for key in {k for item in gradable for k in item[3]} - {column}:
        columns[key] = [item[3].get(key) for item in gradable]
    if answer_column is not None:
        columns[target] = [item[3].get(answer_column) for item in gradable]
    prompts = [_prompt(item[3]) for item in gradable]
    verdicts = iter(verify(name, prompts, [item[2] for item in gradable], columns))
    for index, position, text, row in items:
        if "_invalid" in row:
            verdict = Verdict(None, None, row["_invalid"])
        else:
            verdict = next(verdicts) if text is not None else Verdict(None, None, f"no response in column {column!r}")
        results.append({"row": index, "response_index": position, "score": verdict.score, "passed": verdict.passed,
                        "reason": verdict.reason, "details": list(verdict.details)})  # fmt: skip
    return results


def summarise(results: list[dict[str, Any]], name: str, source: str) -> dict[str, Any]:
    """Pass rate with its interval, mean score, unverifiable counts by reason, per-constraint-type pass rates."""
    judged = [r for r in results if r["passed"] is not None]
    scored = [r["score"] for r in results if r["score"] is not None]
    by_type: dict[str, list[int]] = {}
    for result in results:
        for detail in result["details"]:
            by_type.setdefault(detail["type"], []).append(int(detail["passed"]))
    return {
        "verifier": name,
        "file": source,
        "rows": len({r["row"] for r in results}),
        "responses": len(results),
        "pass_rate": Rate(sum(r["passed"] for r in judged), len(judged)).as_dict(),
        "mean_score": sum(scored) / len(scored) if scored else None,
        "mean_score_ci95": mean_interval(scored)["ci95"],  # Student's t over the scored responses
        "unverifiable": dict(Counter(r["reason"] for r in results if r["score"] is None).most_common()),
        "by_type": {t: Rate(sum(v), len(v)).as_dict() for t, v in sorted(by_type.items())},
    }


def _line(label: str, rate: dict[str, Any]) -> str:
    if not rate["n"]:
        return f"{label}: no verified responses (n=0)"
    low, high = rate["ci95"]
    return f"{label}: {rate['rate']:.3f} [{low:.3f}, {high:.3f}] (95% Wilson interval, n={rate['n']})"


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"verifier {summary['verifier']} on {summary['file']}: "
        f"{summary['rows']} rows, {summary['responses']} responses",
        _line("pass rate", summary["pass_rate"]),
    ]
    if summary["mean_score"] is not None:
        scored = summary["responses"] - sum(summary["unverifiable"].values())
        ci95 = summary.get("mean_score_ci95")
        interval = f" [{ci95[0]:.3f}, {ci95[1]:.3f}] (95% t interval, n={scored})" if ci95 else f" (n={scored})"
        lines.append(f"mean score: {summary['mean_score']:.3f}{interval}")
    unverifiable = summary["unverifiable"]
    lines.append(f"unverifiable: {sum(unverifiable.values())}")
    lines += [f"  {count:>6}  {reason}" for reason, count in unverifiable.items()]
    if summary["by_type"]:
        lines.append("per constraint type:")
        width = max(len(t) for t in summary["by_type"])
        lines += [_line(f"  {t:<{width}}", rate) for t, rate in summary["by_type"].items()]
    return "\n".join(lines)


FileArg = Annotated[Path, typer.Argument(help="jsonl, json or Parquet file, or a saved dataset / run directory")]
VerifierOpt = Annotated[str, typer.Option("--verifier", help="ifeval, math, exact, regex, or a dotted path my_pkg.fn")]
ResponseOpt = Annotated[
    str | None,
    typer.Option("--response-column", help=f"the graded column (default: first of {', '.join(RESPONSE_COLUMNS)})"),
]
AnswerOpt = Annotated[
    str | None, typer.Option("--answer-column", help="the column the verifier reads as constraints / answer / pattern")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write one JSON line per graded response here.")]


def verify_command(
    file: FileArg,
    verifier: VerifierOpt,
    response_column: ResponseOpt = None,
    answer_column: AnswerOpt = None,
    as_json: JsonOpt = False,
    out: OutOpt = None,
) -> None:
    """Grade responses with a verifier: pass rate with its 95% interval, unverifiable by reason, per-type rates."""
    if problem := verifier_problem(verifier):
        raise typer.BadParameter(problem, param_hint="--verifier")
    if not file.exists():
        raise typer.BadParameter(f"{file}: no such file or directory", param_hint="FILE")
    try:
        rows = read_rows(file)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    results = grade(rows, verifier, response_column, answer_column)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    summary = summarise(results, verifier, str(file))
    typer.echo(json.dumps(summary, indent=2) if as_json else report(summary))
