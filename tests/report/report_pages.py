"""A real pipeline run for the report tests: the scripted backend (tests/scripted.py) as policy and judge, through
add_constraints -> generate_responses -> verify -> pairwise_judge -> judge_filter -> make_pairs. The judge is built
to show everything the report draws: consistent verdicts, a position-biased one, unreadable ones (quarantined with
hostile raw output), and a hostile ``<script>`` in a response."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from scripted import ScriptedBackend

from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline

HOSTILE = "<script>alert(1)</script>"
HOSTILE_JUDGE = "<script>alert(2)</script> I refuse to choose"
PROMPTS = 12
PIPELINE = """\
name: report_demo
seed: 0
models:
  policy: {backend: vllm, model: builtin:smollm2-135m-instruct}
  judge: {backend: vllm, model: builtin:smollm2-135m-instruct}
steps:
  - {name: seeds, type: load, path: prompts.jsonl}
  - {name: constrained, type: add_constraints, from: seeds, k: 1, seed: 0}
  - {name: responses, type: generate_responses, from: constrained, model: policy, n: 2}
  - {name: verified, type: verify, from: responses, verifier: ifeval}
  - {name: judged, type: pairwise_judge, from: verified, model: judge}
  - {name: kept, type: judge_filter, from: judged, drop_ties: true}
  - {name: pairs, type: make_pairs, from: kept}
"""


def policy(text: str, params: Any) -> list[str]:
    q = int(re.search(r"question (\d+)", text).group(1))
    long = "alpha " + "word " * (10 + 3 * q) + (HOSTILE if q == 0 else "")
    return [long, "beta short answer"]


def judge(text: str, params: Any) -> str:
    q = int(re.search(r"question (\d+)", text).group(1))
    if q % 6 == 5:
        return HOSTILE_JUDGE  # unreadable: quarantined as a parse failure, raw output kept
    if q % 4 == 3:
        return "A"  # always the first shown: the two orders disagree (a tie, dropped by judge_filter)
    return "A" if text.index("alpha") < text.index("beta") else "B"  # prefers alpha in either order


def make_pipeline_run(root: Path) -> Path:
    with (root / "prompts.jsonl").open("w") as handle:
        for q in range(PROMPTS):
            handle.write(json.dumps({"prompt": f"Answer question {q} about tables."}) + "\n")
    (root / "pipe.yaml").write_text(PIPELINE)
    backend = {"policy": ScriptedBackend(policy), "judge": ScriptedBackend(judge)}
    run_pipeline(load_pipeline(root / "pipe.yaml"), run_dir=root / "run", backends=backend)
    return root / "run"


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, and every section id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.sections: list[str] = []
        self._cell: list[str] | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "section":
            self.sections.append(dict(attrs).get("id") or "")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def table_with(self, header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and header in t[0])


def parse(html: str) -> Tables:
    parser = Tables()
    parser.feed(html)
    return parser
