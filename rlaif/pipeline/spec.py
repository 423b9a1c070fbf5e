"""Pipeline file -> validated ``Pipeline``. Every problem found is reported at once, each with file and line.

Nothing here loads a model or reads more than the first record of a data file: this is ``rlaif validate``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlaif.backends import BACKENDS, backend_class
from rlaif.config import ConfigError, Located, Problem, apply_overrides, check_kind, closest, load_yaml
from rlaif.config.output_dir import pipeline_output_dir
from rlaif.models import hub_problem, reference_problem
from rlaif.pipeline.budget import ModelBudget, budget_problems, model_budget
from rlaif.pipeline.executor import ExecutorSpec, executor_problems
from rlaif.pipeline.graph import check_columns, topological_order
from rlaif.pipeline.spec_values import bool_problems, option_problems, value_problems, with_hint
from rlaif.registry import UnknownComponent
from rlaif.schema import sampling_problems
from rlaif.steps.base import Step
from rlaif.steps.registry import STEPS, step_class

TOP_KEYS = ("name", "description", "seed", "models", "steps", "output", "output_dir", "max_quarantined", "executor")
STEP_KEYS = ("name", "type", "from", "batch_size", "max_quarantined")
# Per-request settings of a model. `lora` is a PEFT adapter directory applied to every request of this model name
# (vLLM serves it as a LoRA request on the shared engine: two names, one with and one without, share one engine).
SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens", "seed", "stop", "logprobs", "lora")
# Run accounting of a model, not sent to it: token and cost limits and its price (rlaif.pipeline.budget).
BUDGET_MODEL_KEYS = ("budget", "price")
OUTPUT_KEYS = ("save", "steps", "jsonl", "push_to_hub")
PUSH_KEYS = ("repo_id", "private", "split")


@dataclass
class ModelSpec:
    name: str
    backend: str
    model: str
    sampling: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepSpec:
    name: str
    type: str
    upstream: list[str]
    step: Step
    batch_size: int
    raw: dict[str, Any]


@dataclass
class Pipeline:
    name: str
    file: Path
    text: str
    seed: int
    models: dict[str, ModelSpec]
    steps: dict[str, StepSpec]  # in topological order
    output: dict[str, Any]
    columns: dict[str, set[str] | None]
    max_quarantined: float = 0.1  # a run is accepted while each step quarantines at most this share (outcome.py)
    output_dir: str | None = None  # where the run writes (cache, stats, dataset/); None: runs/<name>
    budgets: dict[str, ModelBudget] = field(default_factory=dict)  # by model name: limits and prices
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)  # where batches run (rlaif.pipeline.executor)

    def leaves(self) -> list[str]:
        used = {u for s in self.steps.values() for u in s.upstream}
        return [name for name in self.steps if name not in used]


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Parse, override and validate a pipeline file; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), None, "pipeline file not found")])
    text = path.read_text()
    located = load_yaml(path, text)
    check_kind(located, "pipeline")
    apply_overrides(located, overrides or [])
    pipeline_output_dir(located)  # output.save: the deprecated name, warned with its line
    validator = _Validator(located, path, text)
    pipeline = validator.run()
    pipeline.executor = validator.executor
    return pipeline


def _closest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    return closest(word, choices)


class _Validator:
    def __init__(self, located: Located, path: Path, text: str) -> None:
        self.located = located
        self.path = path
        self.text = text
        self.problems: list[Problem] = []
        # Steps that could not be built (unknown type, bad parameters, a repeated name): their problem is reported
        # once, and steps that name them get no follow-on "unknown upstream" or missing-column errors.
        self.broken: set[str] = set()
        self.budgets: dict[str, ModelBudget] = {}  # models with a budget or a price

    def add(self, where: tuple, message: str) -> None:
        self.problems.append(self.located.problem(where, message))

    def run(self) -> Pipeline:
        data = self.located.data
        if not isinstance(data, dict):
            raise ConfigError([self.located.problem((), "expected a mapping with name, models, steps, output")])
        for key in data:
            if key not in TOP_KEYS:
                self.add((key,), f"unknown key {key!r}{_closest(str(key), TOP_KEYS)}; expected one of {TOP_KEYS}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            self.add(("name",), "`name` is required: a non-empty string (it names the run directory)")
        models = self._models(data.get("models") or {})
        steps = self._steps(data.get("steps"), models)
        output = self._output(data.get("output") or {}, steps)
        order, columns = self._graph(steps)
        outputs = output.get("steps") or [n for n in steps if not any(n in s.upstream for s in steps.values())]
        if output.get("push_to_hub") and len(outputs) != 1:
            self.add(
                ("output", "push_to_hub"),
                f"push_to_hub needs exactly one output step; these steps are "
                f"outputs: {outputs}. Name one with output.steps: [name]",
            )
        self._share(("max_quarantined",), data.get("max_quarantined"))
        if not isinstance(data.get("output_dir"), str | None):
            self.add(("output_dir",), f"output_dir must be a directory path or null, got {data['output_dir']!r}")
        self.executor, wrong = executor_problems(data.get("executor"))
        for path, message in [*value_problems(data), *wrong]:
            self.add(path, message)
        if self.problems:
            raise ConfigError(self.problems)
        ordered = {n: steps[n] for n in order}
        seed = data.get("seed", 0)
        limit = data.get("max_quarantined", 0.1)
        output_dir = data.get("output_dir")
        return Pipeline(
            str(name), self.path, self.text, seed, models, ordered, output, columns, limit, output_dir, self.budgets
        )

    # -- models -----------------------------------------------------------------------------------------------
    def _models(self, raw: Any) -> dict[str, ModelSpec]:
        if not isinstance(raw, dict):
            self.add(("models",), "`models` must map names to {backend, model, ...}")
            return {}
        return {name: spec for name, cfg in raw.items() if (spec := self._model(name, cfg)) is not None}

    def _model(self, name: str, cfg: Any) -> ModelSpec | None:
        where = ("models", name)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
            others = [m for m in self.located.data.get("models") if m != name]
            self.add(
                where, f"model {name!r} needs `model:` (a Hub id, local path or builtin:NAME){_closest(name, others)}"
            )
            return None
        backend = cfg.get("backend", "vllm")
        try:
            cls = backend_class(backend)
        except UnknownComponent as exc:
            self.add((*where, "backend"), with_hint(str(exc), backend, BACKENDS))
            return None
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
        options = {k: v for k, v in cfg.items() if k not in ("backend", "model", *SAMPLING_KEYS, *BUDGET_MODEL_KEYS)}
        for key in options:
            if key not in accepted:
                choices = [*SAMPLING_KEYS, *BUDGET_MODEL_KEYS, *accepted]
                self.add(
                    (*where, key),
                    f"unknown option {key!r} for backend {backend!r}{_closest(key, choices)}; "
                    f"expected one of {choices}",
                )
        for key, message in option_problems(cls, options):
            self.add((*where, key), message)
        if backend != "openai" and (problem := reference_problem(cfg["model"]) or hub_problem(cfg["model"])):
            self.add((*where, "model"), problem.replace("\n", " "))
        sampling = {k: cfg[k] for k in SAMPLING_KEYS if k in cfg}
        for key, message in sampling_problems(sampling).items():
            self.add((*where, key), f"model {name!r}: {message}")
        if wrong := budget_problems(cfg):
            for path, message in wrong:
                self.add((*where, *path), f"model {name!r}: {message}")
        elif (budget := model_budget(cfg)) is not None:
            self.budgets[name] = budget
        if sampling.get("lora") is None:
            sampling.pop("lora", None)
        else:
            self._lora(where, backend, sampling["lora"], options)
        return ModelSpec(name, backend, cfg["model"], sampling, options)

    def _lora(self, where: tuple, backend: str, adapter: Any, options: dict[str, Any]) -> None:
        # Resolved from the working directory, like model references (from_pretrained semantics).
        if not isinstance(adapter, str) or not (Path(adapter).expanduser() / "adapter_config.json").is_file():
            self.add((*where, "lora"), f"lora: {adapter!r} is not a PEFT adapter directory (no adapter_config.json)")
        elif backend == "vllm" and not options.get("enable_lora"):
            self.add(
                (*where, "lora"),
                "a LoRA adapter on the vllm backend needs `enable_lora: true` (and "
                "`max_lora_rank:` at least the adapter's r) on this model",
            )

    # -- steps ------------------------------------------------------------------------------------------------
    def _steps(self, raw: Any, models: dict[str, ModelSpec]) -> dict[str, StepSpec]:
        if not isinstance(raw, list) or not raw:
            self.add(("steps",), "`steps` must be a non-empty list")
            return {}
        specs: dict[str, StepSpec] = {}
        seen: dict[str, int] = {}
        for index, cfg in enumerate(raw):
            name = cfg.get("name") if isinstance(cfg, dict) else None
            if isinstance(name, str) and name in seen:
                # The first step keeps the name; the repeat is one problem, not also a cycle or a lost step.
                first = self.located.line(("steps", seen[name]))
                self.add(("steps", index, "name"), f"duplicate step name {name!r} (first at line {first}): rename one")
                continue
            if isinstance(name, str):
                seen[name] = index
            spec = self._step(index, cfg, models)
            if spec is None:
                if isinstance(name, str):
                    self.broken.add(name)
                continue
            specs[spec.name] = spec
        for spec in specs.values():
            for up in spec.upstream:
                if up not in specs and up not in self.broken:
                    self.add(
                        self._step_where(spec.name, "from"),
                        f"step {spec.name!r}: unknown upstream {up!r}{_closest(up, list(specs))}; "
                        f"steps: {list(specs)}",
                    )
        return specs

    def _step_where(self, name: str, key: str) -> tuple:
        for index, cfg in enumerate(self.located.data.get("steps") or []):
            if isinstance(cfg, dict) and cfg.get("name") == name:
                return ("steps", index, key)
        return ("steps",)

    def _step(self, index: int, cfg: Any, models: dict[str, ModelSpec]) -> StepSpec | None:
        where = ("steps", index)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str) or not isinstance(cfg.get("type"), str):
            self.add(where, "each step needs `name` and `type` (strings)")
            return None
        name, type_name = cfg["name"], cfg["type"]
        try:
            cls = step_class(type_name)
        except UnknownComponent as exc:
            self.add((*where, "type"), f"step {name!r}: {with_hint(str(exc), type_name, STEPS)}")
            return None
        params = {k: v for k, v in cfg.items() if k not in STEP_KEYS}
        if wrong := bool_problems(cls.Params, params):
            for key, message in wrong:
                self.add((*where, key), f"step {name!r}: {message}")
            return None
        try:
            step = cls(name, cls.Params(**params), self.path.parent)
        except ValidationError as exc:
            self._param_errors(where, name, cls, exc)
            return None
        upstream = cfg.get("from", [])
        upstream = [upstream] if isinstance(upstream, str) else upstream
        if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
            self.add((*where, "from"), f"step {name!r}: `from` must be a step name or a list of them")
            upstream = []
        if cls.is_source and upstream:
            self.add((*where, "from"), f"step {name!r} is a source ({type_name}) and takes no `from`")
        if not cls.is_source and not upstream:
            self.add(where, f"step {name!r} ({type_name}) needs `from:` naming its upstream step(s)")
        self._step_resources(where, step, models)
        batch_size = cfg.get("batch_size", cls.default_batch_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            self.add((*where, "batch_size"), f"step {name!r}: batch_size must be a positive integer")
        self._share((*where, "max_quarantined"), cfg.get("max_quarantined"))
        return StepSpec(name, type_name, upstream, step, batch_size, cfg)

    def _share(self, where: tuple, value: Any) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and 0 <= value <= 1):
            self.add(where, f"max_quarantined must be a share between 0 and 1 (e.g. 0.1), got {value!r}")

    def _param_errors(self, where: tuple, name: str, cls: type[Step], exc: ValidationError) -> None:
        fields = list(cls.Params.model_fields)
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = str(loc[0]) if loc else ""
            if error["type"] == "extra_forbidden":
                message = f"unknown parameter {key!r}{_closest(key, fields)}; {cls.__name__} takes: {fields}"
            elif error["type"] == "missing":
                message = f"missing required parameter {key!r}"
            else:
                label = ".".join(map(str, loc)) or "parameters"
                message = f"{label}: {error['msg']} (got {error.get('input')!r})"
            self.add((*where, *loc[:1]), f"step {name!r}: {message}")

    def _step_resources(self, where: tuple, step: Step, models: dict[str, ModelSpec]) -> None:
        for model_name in step.model_names():
            if model_name not in self.located.data.get("models", {}):
                self.add(
                    (*where, "model"),
                    f"step {step.name!r}: unknown model {model_name!r}"
                    f"{_closest(model_name, list(models))}; models: {list(models)}",
                )
        for file in step.files():
            if not file.is_file():
                self.add(where, f"step {step.name!r}: file not found: {file}")

    # -- output and graph -------------------------------------------------------------------------------------
    def _output(self, raw: Any, steps: dict[str, StepSpec]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.add(("output",), "`output` must be a mapping with save, steps, jsonl, push_to_hub")
            return {}
        for key in raw:
            if key not in OUTPUT_KEYS:
                self.add(
                    ("output", key),
                    f"unknown output key {key!r}{_closest(key, OUTPUT_KEYS)}; expected one of {OUTPUT_KEYS}",
                )
        for name in raw.get("steps") if isinstance(raw.get("steps"), list) else []:
            if name not in steps:
                self.add(("output", "steps"), f"output step {name!r} is not a step{_closest(name, list(steps))}")
        push = raw.get("push_to_hub")
        if isinstance(push, str):
            raw["push_to_hub"] = {"repo_id": push}
        elif isinstance(push, dict):
            if not isinstance(push.get("repo_id"), str):
                self.add(("output", "push_to_hub"), "push_to_hub needs repo_id (e.g. my-org/my-dataset)")
            for key in push:
                if key not in PUSH_KEYS:
                    self.add(("output", "push_to_hub", key), f"unknown push_to_hub key {key!r}; expected {PUSH_KEYS}")
        elif push is not None:
            self.add(("output", "push_to_hub"), "push_to_hub must be a repo id or {repo_id, private, split}")
        return raw

    def _graph(self, steps: dict[str, StepSpec]) -> tuple[list[str], dict[str, set[str] | None]]:
        upstream = {name: [u for u in s.upstream if u in steps] for name, s in steps.items()}
        order, cyclic = topological_order(upstream)
        if cyclic:
            self.add(self._step_where(cyclic[0], "from"), f"steps form a cycle: {' -> '.join(cyclic)}")
            return order, {}
        # A step fed by a broken one sees unknown columns (like a Hub dataset's): no guessed missing-column errors.
        unknown = {name for name, s in steps.items() if any(u in self.broken for u in s.upstream)}
        columns, problems = check_columns(
            order,
            {n: s.step for n, s in steps.items()},
            upstream,
            lambda name, message: self.located.problem(self._step_where(name, "from"), message),
            unknown_input=unknown,
        )
        self.problems.extend(problems)
        return order, columns
