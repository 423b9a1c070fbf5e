"""PPO rollouts: what the sampler hands the trainer must be what the policy sampled, from the plain policy
distribution (HF: none of the model's own generation settings; vLLM: the sampled ids verbatim, EOS only where a stop
token ended a response, and the real reference adapter for evaluation), and evaluation keeps the data rows whole.

The vLLM cases fabricate the engine's results (no engine): the rollout logic is what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlaif.schema import Completion, GenerationResult
from rlaif.train.rl import core

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def needs_reference(prompts: list[str], completions: list[str], *, reference: list[str]) -> list[float]:
    """A rule reward that reads a column besides the prompt (test_ppo_rollouts.needs_reference), as a reward against
    a reference answer does: without the column it raises."""
    return [float(ref.lower() in text.lower()) for ref, text in zip(reference, completions, strict=True)]


def _shared(model_dir: Path, tmp_path: Path | None = None, temperature: float = 1.0):
    """The PPO SharedBase on the tiny model; with ``tmp_path``, the policy starts from a (random) adapter whose
    frozen copy is the reference, as ppo.setup builds it for model.adapter."""
    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model
    from rlaif.train.rl.shared_base import SharedBase, new_value_head

    cfg = ModelConfig(name=str(model_dir), gradient_checkpointing=False)
    adapters: dict = {"policy": None, "value": None}
    if tmp_path is not None:
        start = build_model(cfg, LoraConfig(r=4, dropout=0.0), adapters={"default": None}, cpu=True).model
        with torch.no_grad():
            for name, param in start.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.5)
        start.save_pretrained(tmp_path / "start")
        adapters = {"policy": tmp_path / "start", "value": None, "reference": tmp_path / "start"}
    built = build_model(cfg, LoraConfig(r=4, dropout=0.0), adapters=adapters, trainable=("policy", "value"), cpu=True)
    return SharedBase(
        built.model.eval(),
        built.tokenizer,
        ("policy", "value"),
        new_value_head(64, "cpu", 0),
        temperature,
        reference="reference" if tmp_path is not None else None,
    )


# -- 1. HF rollouts ignore the model's own sampling settings --------------------------------------------------------
@pytest.mark.model
def test_hf_rollouts_sample_the_plain_policy_not_the_models_generation_config(tiny_model_dir, monkeypatch):
    from rlaif.train.rl.rollout import HFSampler, stop_token_ids

    shared = _shared(tiny_model_dir, temperature=0.7)
    base = shared.model.get_base_model()
    # What chat models ship in generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05), exaggerated.
    base.generation_config.update(
        repetition_penalty=5.0, no_repeat_ngram_size=1, typical_p=0.5, min_p=0.1, suppress_tokens=[5], min_new_tokens=3
    )
    built = []
    original = base._get_logits_processor

    def recording(*args, **kwargs):
        processors = original(*args, **kwargs)
        built.append([type(p).__name__ for p in processors])
        return processors

    monkeypatch.setattr(base, "_get_logits_processor", recording)
    stops = stop_token_ids(shared.tokenizer, shared.model)
    sampler = HFSampler(shared, stops, response_length=6, temperature=0.7, batch_size=4)
    torch.manual_seed(3)
    rollout = sampler.generate(["Tell me a story."])
    assert built == [["TemperatureLogitsWarper"]]  # softmax(logits / T), nothing else
    assert base.generation_config.repetition_penalty == 5.0  # the model's own settings are left as they were
    # The same draws by hand from softmax(logits / T) give the same tokens.
    torch.manual_seed(3)
    sequence, manual = rollout.query, []
    with torch.no_grad(), shared.use("policy"):
        for _ in range(rollout.response.shape[1]):
            logits = shared.model(input_ids=sequence).logits[:, -1].float() / 0.7
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1)
            manual.append(int(token))
            sequence = torch.cat([sequence, token], dim=1)
            if int(token) in stops:
                break
    assert rollout.response[0][rollout.mask[0].bool()].tolist() == manual


# -- 2. evaluation keeps the rows whole -----------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.slow
def test_ppo_evaluation_passes_the_rows_other_columns_to_the_reward(tiny_model_dir, tmp_path):
    from test_ppo import _config

    from rlaif.train.recipes import run_recipe

    data = tmp_path / "prompts.jsonl"
    topics = ["apples", "rivers", "music", "clouds", "trains", "bread", "stars", "rain"]
    data.write_text(
        "".join(
            json.dumps({"prompt": [{"role": "user", "content": f"Tell me about {t}."}], "reference": t}) + "\n"
            for t in topics
        )
    )
    cfg = _config(
        tiny_model_dir,
        tmp_path / "out",
        "reward.judge=null",
        "reward.function=test_ppo_rollouts.needs_reference",
        "train.max_steps=1",
        "lora.r=4",
        "train.response_length=4",
        "train.num_ppo_epochs=1",
        "data.test_size=0.25",
        data=data,
    )
    result = run_recipe(cfg)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    evaluation = json.loads((result.output_dir / "eval.json").read_text())
    assert {"eval_score", "eval_score_reference", "eval_score_gain"} <= set(evaluation)


# -- 3. vLLM rollouts train on exactly what was sampled ---------------------------------------------------------------
class CharTokenizer:
    """One id per character (its code point): re-tokenizing a text never gives back ids sampled in larger pieces."""

    eos_token_id, pad_token_id, chat_template = 2, 0, None

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[ord(c) for c in text])


def _vllm_sampler(stop_ids=(2,), response_length: int = 8, shared=None, backend=None, workdir: Path | None = None):
    from rlaif.train.rl.rollout import VllmSampler

    shared = shared or SimpleNamespace(tokenizer=CharTokenizer())
    return VllmSampler(
        shared, backend, stop_ids, response_length, 1.0, workdir or Path("unused"), "base", owned=False, sleep=False
    )


def _result(text: str, ids: list[int], finish: str) -> GenerationResult:
    return GenerationResult([Completion(text, len(ids), finish, token_ids=ids)])


def test_vllm_rollouts_keep_the_sampled_ids_verbatim():
    sampler = _vllm_sampler()
    # "hello" sampled as two tokens (1000, 1001) then EOS; re-tokenized it would be five characters + EOS.
    rollout = sampler._rollout(
        ["q", "q"], [_result("hello", [1000, 1001, 2], "stop"), _result("hey you", [1002, 1003, 1004], "length")]
    )
    assert rollout.response.tolist() == [[1000, 1001, 2], [1002, 1003, 1004]]
    assert rollout.mask.tolist() == [[1, 1, 1], [1, 1, 1]] and rollout.has_eos.tolist() == [True, False]
    assert rollout.texts == ["hello", "hey you"]


def test_vllm_rollouts_end_on_the_stop_token_that_ended_them():
    sampler = _vllm_sampler(stop_ids=(2, 7))  # 7: an EOS the model's generation_config adds (e.g. <|im_end|>)
    rollout = sampler._rollout(["q"], [_result("x", [1000, 7], "stop")])
    assert rollout.response.tolist() == [[1000, 7]]  # not the tokenizer's EOS (2) appended
    assert rollout.mask.tolist() == [[1, 1]] and rollout.has_eos.tolist() == [True]


def test_an_empty_length_cut_vllm_response_has_no_eos():
    sampler = _vllm_sampler()
    rollout = sampler._rollout(["q", "q"], [_result("", [], "length"), _result("a", [1000, 2], "stop")])
    assert rollout.has_eos.tolist() == [False, True]  # so missing_eos_penalty reaches it
    assert rollout.mask.tolist() == [[0, 0], [1, 1]]
    alone = sampler._rollout(["q"], [_result("", [], "length")])  # a batch of nothing but an empty response
    assert alone.has_eos.tolist() == [False] and alone.mask.sum() == 0 and alone.response.shape == (1, 1)
    rewards = core.token_rewards(torch.tensor([1.0]), torch.zeros(1, 1), alone.mask, kl_coef=0.1)
    advantages, _ = core.gae(rewards, torch.zeros(1, 1), alone.mask, 1.0, 0.95)
    assert torch.isfinite(advantages).all()


# -- 4. vLLM evaluation samples the real reference ------------------------------------------------------------------
class RecordingBackend:
    """Records the parameters of every generate call and checks a LoRA folder exists when it is sent."""

    def __init__(self) -> None:
        self.params: list = []

    def generate(self, prompts, params):
        if params.lora is not None:
            assert (Path(params.lora.path) / "adapter_config.json").is_file()
        self.params.append(params)
        return [_result("ok", [1000, 2], "stop") for _ in prompts]


@pytest.mark.model
def test_vllm_reference_rollouts_send_the_reference_adapter_ppo_started_from(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    shared = _shared(tiny_model_dir, tmp_path)
    saves = []
    save = shared.save_adapter
    monkeypatch.setattr(shared, "save_adapter", lambda name, *args: (saves.append(name), save(name, *args))[1])
    backend = RecordingBackend()
    sampler = _vllm_sampler(
        stop_ids=(shared.tokenizer.eos_token_id,), shared=shared, backend=backend, workdir=tmp_path / "rollouts"
    )
    sampler.generate(["Hi"], policy=False)
    sampler.generate(["Hi"], policy=True)
    sampler.generate(["Hi"], policy=False)
    reference, policy, again = (p.lora for p in backend.params)
    assert reference is not None and again == reference  # saved once: the reference is frozen
    assert policy is not None and policy.path != reference.path
    assert saves == ["reference", "policy"]
    saved = load_file(str(Path(reference.path) / "adapter_model.safetensors"))
    started = load_file(str(tmp_path / "start" / "adapter_model.safetensors"))
    assert saved.keys() == started.keys() and all(torch.equal(saved[k], started[k]) for k in saved)
    assert json.loads((Path(reference.path) / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    sampler.close()
    assert not (tmp_path / "rollouts").exists()

    fresh = RecordingBackend()
    plain = _vllm_sampler(
        stop_ids=(shared.tokenizer.eos_token_id,),
        shared=_shared(tiny_model_dir),
        backend=fresh,
        workdir=tmp_path / "plain",
    )
    plain.generate(["Hi"], policy=False)
    assert fresh.params[0].lora is None  # a fresh policy: the reference is the base, adapters off


class RecordingEngine:
    """Stands in for the vLLM backend class (registered by name, test_ppo_rollouts.RecordingEngine)."""

    def __init__(self, model: str, **options) -> None:
        self.model, self.options = model, options


def test_the_rollout_engine_is_built_by_registry_name_through_the_backend_protocol(monkeypatch):
    import inspect

    from rlaif.backends import base
    from rlaif.backends.vllm_backend import VllmBackend
    from rlaif.train.rl.rollout import vllm_engine

    assert base.backend_class("vllm") is VllmBackend
    monkeypatch.setitem(base.BACKENDS, "vllm", "test_ppo_rollouts:RecordingEngine")
    engine = vllm_engine("builtin:smollm2-135m-instruct", 12, 0.3, 512, 7, False, False)
    assert engine.model == "builtin:smollm2-135m-instruct"
    assert engine.options == {
        "enable_lora": True,
        "max_lora_rank": 16,  # the smallest rank bucket vLLM accepts that holds rank 12
        "gpu_memory_utilization": 0.3,
        "max_model_len": 512,
        "seed": 7,
        "enable_sleep_mode": False,
        "trust_remote_code": False,
    }
    inspect.signature(VllmBackend).bind(engine.model, **engine.options)  # the real class takes these options
