"""The Ray executor (``executor: ray``, ``rlaif run --executor ray``): a step's batches on a Ray cluster.

Where each step runs:

- a source reads in the driver; one that ``prepares`` (load from JSONL) only reads lines there, and Ray tasks
  parse them and write the batches;
- ``stateful`` steps (dedup: its index spans batches) run in the driver, in order, like the local
  executor; steps whose model the caller provided as a live backend too (it cannot travel). A stateful step that
  ``prepares`` splits each batch in three: ``prepare`` (dedup: words, hashes, MinHash signatures, sorted band keys)
  as Ray tasks that read only the columns it needs, up to ``PREPARED_AHEAD`` per worker; ``decide`` (the part that
  needs the state) in the driver, on the batches in order; ``finish`` (the batch's result, shards and marker) as a
  Ray task again;
- steps that use a model (generate, judge, score...) run on a pool of engine actors, ``replicas`` per distinct set of
  engines, each actor owning its engines (built lazily by its own ``EngineRuntime``) with ``num_gpus``/``num_cpus``;
- every other step runs its batches as Ray tasks, at most ``workers`` at once.

A remote batch runs the runner's own per-batch function (``rlaif.pipeline.runner.run_job``) with a runtime of the
process it lands in: same hook, quarantine, accounting and batch seed (``batch_seed`` depends on the step and the
batch index, never on the worker), and it writes its shards and completion marker into the run directory itself,
so the run directory must be one path every node sees. A worker killed mid-batch leaves that batch without its
marker: Ray reruns it (``max_retries``), or a re-run of the pipeline does; finished batches stay. Steps whose whole
input is one batch (mix, self_instruct) keep their whole-input semantics wherever that batch runs.

``ray`` is imported here only, and this module only when a run asks for Ray: ``rlaif`` imports without it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlaif.pipeline.engines import engine_key
from rlaif.pipeline.executor import BatchLost, ExecutorError, ExecutorSpec
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.runner import BatchDone, BatchJob, LocalExecutor, _StepRun, run_job
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import ModelSpec, Pipeline
from rlaif.pipeline.store import InputSlices

log = logging.getLogger(__name__)
TASKS_AHEAD = 3  # model-free tasks submitted per worker: one running, two queued behind it
# A task takes consecutive batches of a cheap step until they hold about this much work (measured on the batches
# done so far): Ray's own cost per task, 5-10 ms on a 2-core machine, outweighed a 1000-line batch of JSONL.
TASK_SECONDS = 0.1
MAX_BATCHES_PER_TASK = 32
# Prepare tasks of a split stateful step (dedup) in flight per worker. With one more than the workers in all, the
# workers sat idle (the machine at one busy core) whenever a decide in the driver took long (an index merge to disk),
# about 1 s of a 1M-record dedup; a prepared dedup batch of 5000 records is ~4 MB of the object store.
PREPARED_AHEAD = 3
ENGINE_CALLS_PER_ACTOR = 2  # one running, one queued: the actor never waits for the driver to cut the next batch
# A Ray worker process serves many tasks of a run: the step it set up (decontaminate's index, a tokenizer) is kept
# for the next batch of the same step pass instead of being built per batch. Keyed by the pass's object id.
_PREPARED: dict[str, tuple[_StepRun, dict[str, Any]]] = {}


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(
            "executor: ray needs the ray package (pip install 'ray==2.60.0', or the rlaif[ray] extra)"
        ) from exc
    return ray


def connect(spec: ExecutorSpec) -> bool:
    """Join (or start) the cluster; True when this call started Ray (and so must shut it down)."""
    ray = _ray()
    _route_ray_logs()
    address = spec.address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        _reachable(address)  # before all else: a wrong --address is named even where Ray already runs
    if ray.is_initialized():
        return False  # the caller's own ray.init() (a notebook, a test): used as it is, left running
    if address and address != "local":
        _use_token_if_any()
    try:
        ray.init(
            address=address or "local",  # no address: a new cluster for this run, never a stale one found on disk
            include_dashboard=False,
            log_to_driver=False,  # workers' logs (vLLM's) stay in the session's log directory: stdout is for results
            configure_logging=False,  # Ray's messages go through logging: to library.log with rlaif's CLI, like vLLM's
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise ExecutorError(f"cannot start the Ray executor on {where}: {exc}") from exc
    return True


def _route_ray_logs() -> None:
    """Under rlaif's CLI logging (``rlaif.logs.setup``) Ray's records go where other libraries' do: the run's
    library.log, stderr only with -v. Ray gives its logger a stderr handler of its own at import."""
    from rlaif.logs import LogFileHandler, StderrHandler

    if any(isinstance(h, StderrHandler | LogFileHandler) for h in logging.getLogger().handlers):
        ray_logger = logging.getLogger("ray")
        for handler in list(ray_logger.handlers):
            ray_logger.removeHandler(handler)
        ray_logger.propagate = True


def _use_token_if_any() -> None:
    """Ray 2.60's ``ray start`` turns token authentication on when this node has a token (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN``), but ``ray.init(address=...)`` sends none unless ``RAY_AUTH_MODE=token``: the run would fail
    with "Authentication token is missing". With a token at hand and no mode chosen, join in token mode (a cluster
    without authentication accepts that too; seen with ``RAY_AUTH_MODE=disabled ray start``)."""
    home_token = Path.home() / ".ray" / "auth_token"
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) or home_token.is_file()
    if "RAY_AUTH_MODE" in os.environ or not has_token:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    with contextlib.suppress(Exception):  # Ray reads its config once per process: refresh it (no public API)
        from ray._raylet import Config

        Config.initialize("")


def _reachable(address: str) -> None:
    """Fail in seconds, not after Ray's own reconnect timeouts, when nothing listens at ``address``."""
    host_port = address.removeprefix("ray://").rstrip("/")
    host, colon, port = host_port.rpartition(":")
    if not colon:  # ray://HOST: the Ray Client default port
        host, port = port, "10001"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc


def _enter(cwd: str) -> None:
    # Relative paths of the pipeline (data files, templates, model directories) resolve as in the driver.
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def _prepare(cache: dict[str, Any], ref: Any, runtime: EngineRuntime, keep: int) -> tuple[_StepRun, dict[str, Any]]:
    """This process's copy of a step pass (``ref``), set up once with ``runtime``, and its setup report."""
    key = ref.hex()
    if key not in cache:
        while len(cache) >= keep:
            cache.pop(next(iter(cache)))
        shipped = _ray().get(ref)
        run = replace(shipped, runtime=runtime, reporter=Reporter(enabled=False), executor=LocalExecutor())
        run.spec.step.setup(run.context())
        cache[key] = (run, run.spec.step.setup_report())
    return cache[key]


def _task_pass(refs: list[Any], models: dict[str, ModelSpec], seed: int, cwd: str) -> tuple[_StepRun, dict[str, Any]]:
    """What a Ray task runs on: this worker process's copy of the step pass (``refs``: left unresolved so that a
    process that has it set up already skips deserializing it) and its setup report."""
    _enter(cwd)
    return _prepare(_PREPARED, refs[0], EngineRuntime(models, seed), keep=8)


def _task(refs: list[Any], jobs: list[BatchJob], models: dict[str, ModelSpec], seed: int, cwd: str) -> list[BatchDone]:
    """Consecutive batches of a model-free step as one Ray task. Each batch writes its own shards and marker."""
    run, report = _task_pass(refs, models, seed, cwd)
    return [replace(run_job(run, job), setup=report) for job in jobs]


def _prepare_task(refs: list[Any], batch: InputSlices, models: dict[str, ModelSpec], seed: int, cwd: str) -> Any:
    """A stateful step's ``prepare`` of one batch, read here: only the columns the step reads."""
    step = _task_pass(refs, models, seed, cwd)[0].spec.step
    return step.prepare(batch.read(columns=step.required_columns()))


class _EngineWorker:
    """An engine actor: its own ``EngineRuntime`` (engines start on the first batch that needs them) and the step
    pass it set up. Restarted by Ray after a crash; the batch it was running is then retried on it."""

    def __init__(self, models: dict[str, ModelSpec], seed: int, cwd: str) -> None:
        _enter(cwd)
        self.runtime = EngineRuntime(models, seed)
        self.prepared: dict[str, tuple[_StepRun, dict[str, Any]]] = {}

    def prepare(self, refs: list[Any]) -> dict[str, Any]:
        """Set the step up here (a judge check runs here, on this actor's engine); its setup report."""
        return _prepare(self.prepared, refs[0], self.runtime, keep=1)[1]

    def run(self, refs: list[Any], job: BatchJob) -> BatchDone:
        run, report = _prepare(self.prepared, refs[0], self.runtime, keep=1)
        return replace(run_job(run, job), setup=report)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.runtime.close()


class RayExecutor:
    """The executor of ``rlaif.pipeline.runner``'s protocol on Ray (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, spec: ExecutorSpec, provided: set[str] | None = None) -> None:
        self.spec = spec
        self.models, self.seed = pipeline.models, pipeline.seed
        self._order = [step.name for step in pipeline.steps.values()]
        self._uses = {step.name: step.step.model_names() for step in pipeline.steps.values()}
        self.provided = set(provided or ())
        self._owns = connect(spec)
        ray = _ray()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.workers = spec.workers or cpus
        self._cwd = os.getcwd()
        self._local = LocalExecutor()
        self._pools: dict[tuple[str, ...], list[Any]] = {}
        self._inflight: dict[Any, tuple[int, Any]] = {}  # object ref -> (batch index, actor or None)
        self._mode = "driver"
        self.reads_inputs = False  # the runner hands tasks shard slices, which they read themselves
        self._refs: list[Any] = []
        self._report: dict[str, Any] = {}
        self._step_name, self._current_pool = "", []
        # Each task holds the cluster's CPUs / workers (at least 1), so Ray runs about ``workers`` at once however
        # many are queued: the driver keeps more queued (TASKS_AHEAD per worker) so that a worker finishing a batch
        # starts the next without waiting for the driver to notice (batches of a cheap filter take milliseconds).
        per_task = max(1, cpus // self.workers)
        self._task = ray.remote(_task).options(num_cpus=per_task, max_retries=spec.max_retries, retry_exceptions=False)
        self._prepare = ray.remote(_prepare_task).options(
            num_cpus=per_task, max_retries=spec.max_retries, retry_exceptions=False
        )
        self._queue: deque[tuple[BatchJob, Any]] = deque()  # prepared mode: (job, its prepare task or None), in order
        self._bundle: list[BatchJob] = []  # tasks mode: the batches the next task takes
        self._batch_seconds: list[float] = []  # tasks mode: the step's batches' measured work so far

    # -- the executor protocol -------------------------------------------------------------------------------
    def start(self, run: _StepRun) -> bool:
        step = run.spec.step
        models = step.model_names()
        self._report, self._step_name = {}, run.spec.name
        self._bundle, self._batch_seconds = [], []
        self._release_pools_after(run.spec.name)
        parsed_remotely = step.is_source and step.prepares  # a JSONL source: lines read here, parsed in tasks
        split = step.stateful and step.prepares and not step.is_source  # prepare and finish in tasks, decide here
        if (step.is_source and not parsed_remotely) or (step.stateful and not split) or self.provided & set(models):
            self._mode, self.reads_inputs = "driver", False
            return self._local.start(run)
        store = copy.copy(run.store)
        store.root = Path(store.root).resolve()  # the same files from any working directory
        shipped = replace(run, store=store, runtime=None, reporter=None, executor=None)
        self._refs = [_ray().put(shipped)]  # before the driver sets the step up: a stateful step travels stateless
        if split:
            self._mode, self.reads_inputs = "prepared", True
            return self._local.start(run)  # decide runs here, on the step set up here
        self._mode = "actors" if models else "tasks"
        self.reads_inputs = self._mode == "tasks"
        if models:  # set up on every actor now: a failed judge check stops the step before any batch, as locally
            pool = self._pool(models)
            reports = self._get([actor.prepare.remote(self._refs) for actor in pool], -1)
            self._report = reports[0]
        return False

    def submit(self, job: BatchJob) -> list[BatchDone]:
        if self._mode == "driver":
            return list(self._local.submit(job))
        if self._mode == "prepared":
            task = None
            if job.stats is None and isinstance(job.batch, InputSlices):
                task = self._prepare.remote(self._refs, job.batch, self.models, self.seed, self._cwd)
            self._queue.append((job, task))
            # Prepared batches are waiting when the driver turns to the next, even after a long decide.
            return self._apply_prepared(keep=self.workers * PREPARED_AHEAD)
        finished = []
        if self._mode == "tasks":
            self._bundle.append(job)
            if len(self._bundle) >= self._bundle_size():
                finished += self._send_bundle()
            return finished
        pool = self._current_pool
        while len(self._inflight) >= len(pool) * ENGINE_CALLS_PER_ACTOR:
            finished += self._wait()
        busy = {id(actor): 0 for actor in pool}
        for _, actor in self._inflight.values():
            busy[id(actor)] += 1
        actor = min(pool, key=lambda a: busy[id(a)])
        self._inflight[actor.run.remote(self._refs, job)] = (job.index, actor)
        return finished

    def drain(self) -> list[BatchDone]:
        finished = self._apply_prepared(keep=0) if self._mode == "prepared" else []
        if self._bundle:
            finished += self._send_bundle()
        while self._inflight:
            finished += self._wait()
        return finished

    def setup_report(self, run: _StepRun) -> dict[str, Any]:
        return self._local.setup_report(run) if self._mode in ("driver", "prepared") else self._report

    def close(self) -> None:
        for key in list(self._pools):
            self._kill_pool(key)
        if self._owns and _ray().is_initialized():
            _ray().shutdown()

    # -- inside ----------------------------------------------------------------------------------------------
    def _release_pools_after(self, step_name: str) -> None:
        """Engine actors no step from ``step_name`` on needs go: their CPUs/GPUs (and memory) serve what follows."""
        later = self._order[self._order.index(step_name) :] if step_name in self._order else self._order
        needed = {self._key(self._uses[name]) for name in later if self._uses.get(name)}
        for key in [k for k in self._pools if k not in needed]:
            self._kill_pool(key)

    def _kill_pool(self, key: tuple[str, ...]) -> None:
        ray = _ray()
        for actor in self._pools.pop(key):
            with contextlib.suppress(Exception):  # a dead actor has nothing left to close
                ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor)

    def _key(self, models: list[str]) -> tuple[str, ...]:
        return tuple(sorted({engine_key(self.models[m]) for m in models if m in self.models}))

    def _pool(self, models: list[str]) -> list[Any]:
        """The engine actors of these models' engines (made on first use, kept while a later step needs them)."""
        key = self._key(models)
        if key not in self._pools:
            ray, spec = _ray(), self.spec
            _check_capacity(ray, spec)
            actor = ray.remote(_EngineWorker).options(
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_restarts=spec.max_retries,
                max_task_retries=spec.max_retries,
            )
            self._pools[key] = [actor.remote(self.models, self.seed, self._cwd) for _ in range(spec.replicas)]
        self._current_pool = self._pools[key]
        return self._current_pool

    def _apply_prepared(self, keep: int) -> list[BatchDone]:
        """Decide here, in batch order, the queued batches whose ``prepare`` is back, and send each to a task that
        finishes it (reads its records, writes its shards and marker); wait for the oldest while more than ``keep``
        are queued (so that at most ``keep`` prepare tasks run beside this process's work)."""
        finished: list[BatchDone] = []
        while self._queue:
            job, task = self._queue[0]
            if task is not None and len(self._queue) <= keep and not _ray().wait([task], timeout=0)[0]:
                break
            self._queue.popleft()
            if task is None:  # not a first pass over shard slices: all of it here
                finished += self._local.submit(job)
                continue
            run, prepared = self._local.run, self._get([task], job.index)[0]
            decided = run.spec.step.decide(prepared, run.context(job.index))
            self._bundle = [replace(job, decided=decided)]
            finished += self._send_bundle()
        return finished

    def _bundle_size(self) -> int:
        """Batches per task: one until some are done, then as many as TASK_SECONDS of their measured work."""
        if not self._batch_seconds:
            return 1
        each = sum(self._batch_seconds) / len(self._batch_seconds)
        return max(1, min(MAX_BATCHES_PER_TASK, int(TASK_SECONDS / max(each, 1e-6))))

    def _send_bundle(self) -> list[BatchDone]:
        finished = []
        while len(self._inflight) >= self.workers * TASKS_AHEAD:
            finished += self._wait()
        jobs, self._bundle = self._bundle, []
        ref = self._task.remote(self._refs, jobs, self.models, self.seed, self._cwd)
        self._inflight[ref] = (jobs[0].index, None)
        return finished

    def _wait(self) -> list[BatchDone]:
        ready, _ = _ray().wait(list(self._inflight), num_returns=1)
        finished = []
        for ref in ready:
            index, actor = self._inflight.pop(ref)
            got = self._get([ref], index)[0]
            for out in got if actor is None else [got]:  # a task returns its bundle's batches
                if out.setup and not self._report:
                    self._report = out.setup
                if out.first:
                    self._batch_seconds.append(out.stats["wall_s"])
                finished.append(out)
        return finished

    def _get(self, refs: list[Any], index: int) -> list[Any]:
        """``ray.get``, with a step's own error raised as itself and a worker lost for good as ``BatchLost``."""
        ray = _ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # the step's own error (accounting, a failed judge check)
            self._abandon()
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayError as exc:  # the worker died more often than max_retries
            self._abandon()
            what = f"batch {index}" if index >= 0 else "its setup"
            raise BatchLost(
                f"step {self._step_name!r}: {what} lost its Ray worker {self.spec.max_retries + 1} times "
                f"({type(exc).__name__}); the finished batches are kept: run again to resume"
            ) from exc

    def _abandon(self) -> None:
        ray = _ray()
        for ref, (_, actor) in self._inflight.items():
            # A task's worker is killed (force): it must not write a marker after the run gave up. An engine
            # actor's call cannot be forced; the actor is killed with its pool when the run closes.
            with contextlib.suppress(Exception):  # already finished
                ray.cancel(ref, force=actor is None)
        self._inflight.clear()
        self._queue.clear()
        self._bundle = []


def _check_capacity(ray: Any, spec: ExecutorSpec) -> None:
    """Replicas the cluster cannot place would wait forever: refuse them up front."""
    total = ray.cluster_resources()
    for resource, each in (("CPU", spec.num_cpus), ("GPU", spec.num_gpus)):
        if each and spec.replicas * each > total.get(resource, 0):
            raise ExecutorError(
                f"executor: {spec.replicas} replicas x {each} {resource} each need {spec.replicas * each:g} "
                f"{resource}s; the Ray cluster has {total.get(resource, 0):g}: lower replicas or "
                f"num_{resource.lower()}s"
            )
