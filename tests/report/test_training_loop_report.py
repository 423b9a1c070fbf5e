"""Reports of a training output (a synthetic metrics.jsonl: DPO, PPO and GRPO keys, an eval, a resume, a broken line)
and of a loop output (summary.json of a verifier loop and of a judge loop, with a round's training log)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from report_pages import parse

from rlaif.report import detect, render
from rlaif.report.svg import Series, decimate, line_chart, nice_ticks


def write_metrics(root: Path, steps: int = 30) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event": "train_begin", "step": 0, "max_steps": steps})]
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "epoch": step / steps,
            "loss": 0.69 - 0.01 * step,
            "rewards/margins": 0.05 * step,
            "rewards/accuracies": min(1.0, 0.5 + 0.02 * step),
            "objective/kl": 0.001 * step,
            "objective/entropy": 2.0 - 0.01 * step,
            "policy/clipfrac_avg": 0.1,
            "reward": 0.2 + 0.01 * step,
            "learning_rate": 1e-4,
            "custom/thing": float(step % 3),
            "flag": True,  # not a number to draw
        }
        lines.append(json.dumps(row))
        if step == 12:
            lines.append(json.dumps({"event": "train_begin", "step": 12, "max_steps": steps}))  # a resume
            lines.append('{"step": 12, "loss": 0.5')  # half a line: a run killed while writing
        if step % 10 == 0:
            lines.append(
                json.dumps({"step": step, "eval_loss": 0.7 - 0.02 * step, "eval_rewards/margins": 0.1 * step})
            )
    lines.append(json.dumps({"step": steps, "train_runtime": 12.5, "train_loss": 0.5, "total_flos": 1.0}))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval.json").write_text(json.dumps({"eval_loss": 0.1234, "eval_rewards/accuracies": 0.875}))


def chart_titles(page: str) -> list[str]:
    return re.findall(r'<svg [^>]*aria-label="([^"]*)"', page)


def test_training_report_draws_every_headline_curve(tmp_path):
    write_metrics(tmp_path / "out")
    with (tmp_path / "out" / "metrics.jsonl").open("a") as handle:  # a hostile metric name: a title, escaped
        handle.write(json.dumps({"step": 31, "<script>alert(3)</script>": 1.0}) + "\n")
    page = render(tmp_path / "out")
    assert detect(tmp_path / "out") == "training"
    assert "<script" not in page and "&lt;script&gt;alert(3)&lt;/script&gt;" in page
    assert parse(page).sections == ["curves", "eval"]
    titles = chart_titles(page)
    for title in (
        "loss",
        "reward margin (DPO, RM)",
        "reward accuracy (DPO, RM)",
        "reward (PPO, GRPO)",
        "KL to the reference",
        "entropy",
        "clip fraction",
        "learning rate",
        "custom/thing",
        "eval_loss",
        "eval_rewards/margins",
    ):
        assert title in titles, title
    assert "flag" not in titles
    text = re.sub(r"<[^>]+>", " ", page)
    assert "31 logged steps, last step 31" in text and "resumed at step 12" in text
    assert "unreadable lines skipped: [16]" in text  # the half line, by its line number
    tables = {r[0]: r[1] for t in parse(page).tables for r in t[1:]}
    assert tables["eval_loss"] == "0.123" and tables["eval_rewards/accuracies"] == "0.875"
    assert tables["train_runtime"] == "12.500"


def test_a_long_run_is_thinned_but_keeps_its_spikes(tmp_path):
    steps = 10_000
    xs = list(range(steps))
    ys = [math.sin(i / 50) for i in xs]
    ys[7_777] = 25.0  # one spike must survive decimation
    dx, dy = decimate(xs, ys)
    assert len(dx) <= 1_200 and max(dy) == 25.0 and min(dy) == min(ys) and dx == sorted(dx)
    svg = line_chart("loss", [Series("loss", xs, ys)])
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(points) == len(dx) and len(svg) < 20_000


def test_ticks_cover_the_range():
    for low, high in ((0, 1), (-3.2, 17.9), (0.0001, 0.0003), (5, 5), (1e6, 3e6)):
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 12 and ticks == sorted(ticks)


VERIFIER_ROWS = [
    {"round": 0, "policy": "base", "trained": False, "eval": {"kind": "verifier", "n": 48, "passes": 22,
     "pass_rate": 22 / 48, "pass_rate_ci95": [0.32575, 0.59709]}},
    {"round": 1, "prompts": 83, "made": 166, "kept": 60, "dropped": {"pairs: no pair above margin": 23},
     "quarantined": {}, "trained": True, "not_trained": None, "train": {"loss": 0.3968, "steps": 60},
     "eval": {"kind": "verifier", "n": 48, "passes": 35, "pass_rate": 35 / 48, "pass_rate_ci95": [0.59003, 0.83434],
              "vs_base": {"difference": 0.27083, "ci95": [0.11517, 0.40594], "n": 48}},
     "seconds": {"generate": 152.6, "label": 0.15, "filter": 0.02, "train": 1411.62, "hand_off": 40.7,
                 "eval": 257.83, "total": 1862.96}},
]  # fmt: skip


def test_loop_report_shows_each_round_with_its_interval(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(VERIFIER_ROWS))
    write_metrics(tmp_path / "round-1" / "train")
    page = render(tmp_path)
    assert detect(tmp_path) == "loop"
    assert parse(page).sections == ["rounds", "round-training", "round-data"]
    rounds = parse(page).table_with("held-out pass rate")
    assert rounds[1][:2] == ["0", "base policy"] and rounds[1][7] == "0.458 [0.326-0.597] (n=48)"
    assert rounds[2][:7] == ["1", "yes", "83", "166", "60", "23", "0.397"]
    assert rounds[2][7] == "0.729 [0.590-0.834] (n=48)" and rounds[2][8] == "0.271 [0.115-0.406]"
    titles = chart_titles(page)
    assert "held-out pass rate (95% CI)" in titles and "seconds per phase" in titles
    assert "loss" in titles  # round 1's training log, one line per round
    assert "round 1: pairs: no pair above margin" in page


def test_judge_loop_report_reads_win_rates(tmp_path):
    rows = [
        {"round": 0, "policy": "base", "trained": False, "eval": None},
        {"round": 1, "prompts": 8, "made": 16, "kept": 5, "dropped": {},
         "quarantined": {"judged: judge parse failure": 3},
         "trained": True, "train": {"loss": 0.6}, "eval": {"judged": 20, "wins": 12, "losses": 6, "ties": 2,
         "win_rate": 0.65, "win_rate_ci95": [0.433, 0.819], "consistency": 0.5, "against": "previous"}},
        {"round": 2, "prompts": 8, "made": 16, "kept": 0, "dropped": {}, "quarantined": {}, "trained": False,
         "not_trained": "no rows kept", "train": {}, "eval": None},
    ]  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    page = render(tmp_path)
    table = parse(page).table_with("held-out win rate vs previous policy")
    assert table[2][5] == "3" and table[2][7] == "0.650 [0.433-0.819] (n=20)"
    assert table[3][1] == "no rows kept" and table[3][7] == "no eval"
    assert "No round has a training log" in page
