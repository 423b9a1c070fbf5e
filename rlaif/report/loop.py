"""A loop output's sections (rlaif.loop.rounds: summary.json, round-K/{data,train,eval}/): per round the held-out
figure with its 95% interval (pass rate, win rate or mean reward), its difference from the base, the data made and
kept, the time per phase, the training curves of every round on one chart, and each round's data funnel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.report.page import Section, grid, note, rate_text, table
from rlaif.report.pipeline import funnel_rows
from rlaif.report.runfiles import RunFiles
from rlaif.report.svg import Series, bar_chart, interval_chart, line_chart
from rlaif.report.training import GROUPS, read_metrics

PHASES = ("generate", "label", "filter", "train", "hand_off", "eval")


def eval_figure(ev: dict[str, Any] | None) -> tuple[str, float | None, list[float] | None, int | None]:
    """(what is measured, value, ci95, n) of a round's held-out eval, whatever its kind."""
    if not ev:
        return "", None, None, None
    if ev.get("kind") == "verifier":
        return "held-out pass rate", ev.get("pass_rate"), ev.get("pass_rate_ci95"), ev.get("n")
    if ev.get("kind") == "reward_model":
        return "held-out mean reward", ev.get("mean_reward"), ev.get("mean_reward_ci95"), ev.get("n")
    against = "base" if ev.get("against") == "base" else "previous policy"
    return f"held-out win rate vs {against}", ev.get("win_rate"), ev.get("win_rate_ci95"), ev.get("judged")


def loop_sections(root: Path, rows: list[dict[str, Any]]) -> list[Section]:
    return [
        Section("rounds", "Rounds", _rounds(rows)),
        Section("round-training", "Training per round", _training(root, rows)),
        Section("round-data", "Data per round", _data(root, rows)),
    ]


def _rounds(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note("summary.json has no rounds yet.", "warn")
    measured = next((eval_figure(r.get("eval"))[0] for r in rows if r.get("eval")), "held-out eval")
    lines = []
    for r in rows:
        _, value, ci, n = eval_figure(r.get("eval"))
        diff = (r.get("eval") or {}).get("vs_base") or {}
        vs = rate_text(diff.get("difference"), diff.get("ci95")) if diff.get("difference") is not None else "-"
        trained = "base policy" if r.get("round") == 0 else ("yes" if r.get("trained") else r.get("not_trained"))
        lines.append(
            [
                r.get("round"),
                trained,
                r.get("prompts", "-"),
                r.get("made", "-"),
                r.get("kept", "-"),
                _lost(r) if "made" in r else "-",
                (r.get("train") or {}).get("loss"),
                rate_text(value, ci, n) if r.get("eval") else "no eval",
                vs,
            ]
        )
    headers = ["round", "trained", "prompts", "made", "kept", "lost", "mean loss", measured, "vs base [95% CI]"]
    labels = [f"round {r.get('round')}" for r in rows]
    points = [(eval_figure(r.get("eval"))[1], eval_figure(r.get("eval"))[2]) for r in rows]
    reward = "reward" in measured
    values = [p[0] for p in points if p[0] is not None] + [b for p in points if p[1] for b in p[1]]
    y_range = (min([0.0, *values]), max([1.0, *values])) if reward else (0.0, 1.0)
    charts = [interval_chart(f"{measured} (95% CI)", labels, points, y_range=y_range)]
    diffs = [((r.get("eval") or {}).get("vs_base") or {}) for r in rows]
    if any(d.get("difference") is not None for d in diffs):
        diff_points = [(d.get("difference"), d.get("ci95")) for d in diffs]
        spread = [abs(b) for d in diffs if d.get("ci95") for b in d["ci95"]] + [1.0 if not reward else 0.0]
        bound = max(spread)
        charts.append(
            interval_chart("difference from the base, paired (95% CI)", labels, diff_points, y_range=(-bound, bound))
        )
    trained_rows = [r for r in rows if "made" in r]
    if trained_rows:
        names = [f"round {r['round']}" for r in trained_rows]
        charts.append(
            bar_chart(
                "rows kept / records dropped or quarantined",
                names,
                [("kept", [r.get("kept", 0) for r in trained_rows]), ("lost", [_lost(r) for r in trained_rows])],
            )
        )
    timed = [r for r in rows if r.get("seconds")]
    if timed:
        charts.append(
            bar_chart(
                "seconds per phase",
                [f"round {r['round']}" for r in timed],
                [(p.replace("_", "-"), [float(r["seconds"].get(p, 0.0)) for r in timed]) for p in PHASES],
                value_fmt=lambda v: f"{v:.0f}",
            )
        )
    return table(headers, lines, numeric=[2, 3, 4, 5, 6]) + grid(charts)


def _lost(row: dict[str, Any]) -> int:
    return sum((row.get("dropped") or {}).values()) + sum((row.get("quarantined") or {}).values())


def _train_dirs(root: Path, k: int) -> list[tuple[str, Path]]:
    train = root / f"round-{k}" / "train"
    if (train / "metrics.jsonl").is_file():
        return [(f"round {k}", train)]
    return [(f"round {k} {d.name}", d) for d in sorted(train.glob("*")) if (d / "metrics.jsonl").is_file()]


def _training(root: Path, rows: list[dict[str, Any]]) -> str:
    runs = [
        (label, read_metrics(d / "metrics.jsonl"))
        for r in rows
        if isinstance(r.get("round"), int)
        for label, d in _train_dirs(root, r["round"])
    ]
    runs = [(label, m) for label, m in runs if m.rows]
    if not runs:
        return note("No round has a training log (round-K/train/metrics.jsonl).")
    charts = []
    for title, group in GROUPS[:8]:
        # One key per chart (the first of the group any round logged), one line per round.
        key = next((k for k in group if any(k in m.names() for _, m in runs)), None)
        series = [Series(label, m.series(key).xs, m.series(key).ys) for label, m in runs if key in m.names()]
        if key and series:
            charts.append(line_chart(f"{title}: {key}" if key != title else title, series))
    return grid(charts)


def _data(root: Path, rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        for phase in ("data", "eval"):
            run_dir = root / f"round-{r.get('round')}" / phase
            if not (run_dir / "stats.json").is_file():
                continue
            run = RunFiles(run_dir)
            headers = [
                "step",
                "type",
                "in",
                "out",
                "dropped",
                "quarantined",
                "tokens in",
                "tokens out",
                "seconds",
                "cached",
            ]
            parts.append(
                f"<details><summary>round {r.get('round')}: {phase} pipeline ({len(run.stats)} steps)</summary>"
                + table(headers, funnel_rows(run.stats), numeric=range(2, 9))
                + "</details>"
            )
    dropped = {f"round {r['round']}: {k}": v for r in rows for k, v in (r.get("dropped") or {}).items()}
    dropped |= {
        f"round {r['round']}: {k} (quarantined)": v for r in rows for k, v in (r.get("quarantined") or {}).items()
    }
    reasons = table(["round: step: reason", "records"], list(dropped.items()), numeric=[1]) if dropped else ""
    return reasons + "".join(parts) + note("Open a round's own report: rlaif report RUN/round-K/data")
