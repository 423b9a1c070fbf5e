"""The docs hold: README.md and docs/ build with ``mkdocs build --strict``, and every code block they show works.

- a YAML block parses; unless marked ``<!-- fragment -->`` it is a whole pipeline, training config or loop file and
  passes ``rlaif validate`` (placed where its first-line comment ``# pipelines/x.yaml`` says, so its relative paths
  resolve; a block marked ``<!-- file: PATH -->`` must also equal that shipped file);
- a shell block: every ``rlaif`` command names an existing subcommand and only options it accepts, the file it
  names loads with its ``key=value`` overrides; every ``make`` target exists; every repository path exists;
- a Python block runs (as an imported module, so ``if __name__ == "__main__":`` bodies stay off);
- every repository path and ``rlaif.module`` named in the text exists, and README's links resolve.

Fast (no model loads) and unmarked: a renamed module, command, option or page fails the fast tier.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml
from markdown.extensions.toc import slugify
from typer.testing import CliRunner

from rlaif.cli import app

# typer 0.29 carries its own click (typer._click): its UsageError (unknown command or option, bad value) is the base
# class of the public typer.BadParameter.
UsageError = typer.BadParameter.__base__

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_DIRS = ("rlaif", "pipelines", "prompts", "constitutions", "tests", "bench", "docs")
SHELL = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # the HTML comment on the line before the fence, "" when none

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def code_blocks(doc: Path) -> list[Block]:
    blocks, lines = [], doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            marker = before if before.startswith("<!--") else ""
            blocks.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n", marker))
            i = end
        i += 1
    return blocks


BLOCKS = [block for doc in DOCS for block in code_blocks(doc)]


def _blocks(*langs: str) -> list:
    return [pytest.param(b, id=b.where) for b in BLOCKS if b.lang in langs]


# -- the site ----------------------------------------------------------------------------------------------------
def test_mkdocs_build_is_strict_clean(tmp_path):
    # strict + mkdocs.yml's validation settings: a broken link or anchor, or a page missing from nav, is an error
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_links_resolve():
    # mkdocs checks the links between pages; README is outside docs/, so its links are checked here
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert not broken, broken


def test_code_blocks_are_found():
    langs = {b.lang for b in BLOCKS}
    assert {"yaml", "bash", "python"} <= langs, langs
    assert any(b.marker == "<!-- fragment -->" for b in BLOCKS)


# -- paths and modules named in the text ----------------------------------------------------------------------------
def _repo_paths(text: str) -> set[str]:
    found = re.findall(rf"(?<![\w./<>~-])((?:{'|'.join(REPO_DIRS)})/[\w./*-]*)", text)
    return {p.rstrip(".,") for p in found}


def _exists(path: str) -> bool:
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_repository_path_named_exists(doc):
    missing = sorted(p for p in _repo_paths(doc.read_text()) if not _exists(p))
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def _module_ref_exists(ref: str) -> bool:
    parts = ref.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:cut]))
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            rest = parts[cut:]
            if not rest:
                return True
            source = Path(spec.origin).read_text() if spec.origin else ""
            return len(rest) == 1 and re.search(rf"^(class |def )?{rest[0]}\b", source, flags=re.M) is not None
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_rlaif_module_named_exists(doc):
    refs = set(re.findall(r"`(rlaif(?:\.\w+)+)", doc.read_text())) | set(
        re.findall(r"from (rlaif(?:\.\w+)*) import", doc.read_text())
    )
    missing = sorted(ref for ref in refs if not _module_ref_exists(ref))
    assert not missing, f"{doc.name} names modules that do not exist: {missing}"


# -- the reference covers what the code defines ---------------------------------------------------------------------
def _code_words(page: str) -> set[str]:
    """Every word inside a `code span` of docs/<page>."""
    spans = re.findall(r"`([^`\n]+)`", (ROOT / "docs" / page).read_text())
    return {word for span in spans for word in re.findall(r"\w+", span)}


def _fields(*models) -> set[str]:
    return {name for model in models for name in model.model_fields}


def test_the_step_catalogue_lists_every_registered_step():
    from rlaif.steps.registry import STEPS

    rows = set(re.findall(r"^\| `(\w+)` \|", (ROOT / "docs" / "steps.md").read_text(), flags=re.M))
    assert rows == set(STEPS), f"missing: {sorted(set(STEPS) - rows)}; not steps: {sorted(rows - set(STEPS))}"


def test_every_pipeline_key_is_documented():
    from rlaif.pipeline import spec

    keys = {*spec.TOP_KEYS, *spec.STEP_KEYS, *spec.SAMPLING_KEYS, *spec.OUTPUT_KEYS, *spec.PUSH_KEYS}
    assert not keys - _code_words("pipelines.md"), sorted(keys - _code_words("pipelines.md"))


def test_every_training_config_key_is_documented():
    from rlaif.train import config_base as c
    from rlaif.train import ppo_config as p

    keys = _fields(c.RecipeConfig, c.ModelConfig, c.LoraConfig, c.DataConfig, c.SFTTrain, c.RMTrain, c.DPOTrain)
    keys |= _fields(c.KTOTrain, p.PPOTrain, p.RewardConfig, p.JudgeConfig)
    assert not keys - _code_words("training.md"), sorted(keys - _code_words("training.md"))


def test_every_loop_key_is_documented():
    from rlaif.loop import config as c

    keys = _fields(c.LoopConfig, c.PromptsConfig, c.PipelineRef, c.TrainRef, c.EvalRef)
    assert not keys - _code_words("loop.md"), sorted(keys - _code_words("loop.md"))


def _leaves(cmd, path: list[str]):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _leaves(sub, [*path, name])
    else:
        yield path, cmd


def test_every_command_and_option_is_documented():
    parts = re.split(r"^## `([^`]+)`$", (ROOT / "docs" / "cli.md").read_text(), flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    everywhere = set(re.findall(r"`(--[\w-]+)", parts[0]))  # options every command takes: documented once, on top
    missing = []
    for path, cmd in _leaves(typer.main.get_command(app), ["rlaif"]):
        heading = "rlaif train RECIPE" if path[1] == "train" else " ".join(path)
        body = sections.get(heading, "")
        names = [f"`{path[2]}`"] if path[1] == "train" else []
        options = [
            f"`{opt}"
            for param in cmd.params
            for opt in (*param.opts, *param.secondary_opts)
            if "--" in opt and opt not in everywhere
        ]
        missing += [f"{' '.join(path)}: {name}" for name in names + options if name not in body]
        missing += [f"{' '.join(path)}: no section" for _ in [heading] if heading not in sections]
    assert not missing, missing


# -- YAML --------------------------------------------------------------------------------------------------------
def _validate(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("block", _blocks("yaml", "yml"))
def test_yaml_block(block: Block):
    assert yaml.safe_load(block.text) is not None, f"{block.where}: empty YAML block"
    if block.marker == "<!-- fragment -->":
        return
    if block.marker.startswith("<!-- file:"):
        shipped = ROOT / block.marker.removeprefix("<!-- file:").removesuffix("-->").strip()
        assert shipped.is_file(), f"{block.where}: {block.marker} names no file"
        assert block.text == shipped.read_text(), f"{block.where}: differs from {shipped.relative_to(ROOT)}"
        _validate(shipped)
        return
    # Where the file would live decides what its relative paths mean: a first-line comment "# pipelines/x.yaml"
    # places it there; otherwise at the repository root.
    header = re.match(r"# (\S+\.ya?ml)\s*$", block.text.splitlines()[0])
    where = (ROOT / header.group(1)).parent if header else ROOT
    assert where.is_dir(), f"{block.where}: {where} does not exist"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=".docs-check-", dir=where) as file:
        file.write(block.text)
        file.flush()
        _validate(Path(file.name))


# -- shell commands ------------------------------------------------------------------------------------------------
def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at ; & && || |."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|()"):
                found += [command] if command else []
                command = []
            else:
                command.append(token)
        found += [command] if command else []
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):(?!=)", (ROOT / "Makefile").read_text(), flags=re.M))


def _rlaif_command(args: list[str]) -> tuple[list[str], typer.Context]:
    """The subcommand path and the parsed context; a UsageError for an unknown command or option."""
    cmd = typer.main.get_command(app)
    path = ["rlaif"]
    args = [a for a in args if a not in ("-v", "--verbose")]
    while hasattr(cmd, "commands"):  # a group
        name = args.pop(0) if args else ""
        if name not in cmd.commands:
            raise UsageError(f"`{' '.join(path)}` has no subcommand {name!r}: {sorted(cmd.commands)}")
        cmd = cmd.commands[name]
        path.append(name)
    return path, cmd.make_context(" ".join(path), args)


def _check_loads(path: list[str], params: dict) -> None:
    """The file a command names loads with its overrides, as the command itself would load it (no model loads)."""
    overrides = list(params.get("overrides") or [])
    if path[1:] in (["run"], ["show"]):
        from rlaif.pipeline.spec import load_pipeline

        load_pipeline(params["file"], overrides)
    elif path[1:] == ["loop"]:
        from rlaif.loop.config import load_loop_config

        load_loop_config(params["file"], overrides)
    elif path[1] == "train":
        from rlaif.train.config_load import load_config

        load_config(params["config"], path[2], overrides, cpu=params["cpu"])


def check_command(argv: list[str]) -> list[str]:
    paths = [path for arg in argv for path in _repo_paths(arg.partition("=")[2] or arg)]
    problems = [f"path {path!r} does not exist" for path in paths if not _exists(path)]
    if argv[0] == "make":
        problems += [f"no make target {t!r}" for t in argv[1:] if not t.startswith("-") and t not in make_targets()]
    if Path(argv[0]).name == "rlaif":
        try:
            path, ctx = _rlaif_command(argv[1:])
        except UsageError as exc:
            return problems + [f"{exc.format_message()}"]
        if not problems and not any("*" in a for a in argv):
            from rlaif.config import ConfigError

            try:
                _check_loads(path, ctx.params)
            except ConfigError as exc:
                problems.append(str(exc))
    return problems


@pytest.mark.parametrize("block", _blocks(*SHELL))
def test_shell_block(block: Block):
    problems = [f"`{' '.join(argv)}`: {p}" for argv in commands(block.text) for p in check_command(argv)]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


def test_the_command_check_catches_what_it_should():
    assert commands("a x && b y # c\nmake demo \\\n  test &") == [["a", "x"], ["b", "y"], ["make", "demo", "test"]]
    assert check_command(["make", "demo", "test-fast"]) == []
    assert check_command(["make", "nope"]) == ["no make target 'nope'"]
    assert "No such option" in " ".join(check_command(["rlaif", "run", "pipelines/quickstart.yaml", "--nope"]))
    assert "no subcommand 'runn'" in " ".join(check_command(["rlaif", "runn", "x"]))
    assert "no subcommand 'dpp'" in " ".join(check_command(["rlaif", "train", "dpp", "pipelines/train/dpo.yaml"]))
    assert check_command(["rlaif", "show", "pipelines/nope.yaml"]) == ["path 'pipelines/nope.yaml' does not exist"]


# -- Python --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", _blocks("python"))
def test_python_block_runs(block: Block):
    # run as an imported module: its imports resolve, its classes build; `__main__` guards keep models from loading
    exec(compile(block.text, block.where, "exec"), {"__name__": "rlaif_docs_block"})
