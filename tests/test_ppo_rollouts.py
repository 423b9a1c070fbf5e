"""PPO rollouts: what the sampler hands the trainer must be what the policy sampled, from the plain policy
distribution (HF: none of the model's own generation settings; vLLM: the sampled ids verbatim, EOS only where a stop
token ended a response, and the real reference adapter for evaluation), and evaluation keeps the data rows whole.

The vLLM cases fabricate the engine's results (no engine): the rollout logic is what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
    from rlaif.train.ppo_model import SharedBase, new_value_head

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
    return SharedBase(built.model.eval(), built.tokenizer, ("policy", "value"), new_value_head(64, "cpu", 0),
                      temperature, reference="reference" if tmp_path is not None else None)


# -- 1. HF rollouts ignore the model's own sampling settings --------------------------------------------------------
@pytest.mark.model
def test_hf_rollouts_sample_the_plain_policy_not_the_models_generation_config(tiny_model_dir, monkeypatch):
    from rlaif.train.rollout import HFSampler, stop_token_ids

    shared = _shared(tiny_model_dir, temperature=0.7)
    base = shared.model.get_base_model()
    # What chat models ship in generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05), exaggerated.
    base.generation_config.update(repetition_penalty=5.0, no_repeat_ngram_size=1, typical_p=0.5, min_p=0.1,
                                  suppress_tokens=[5], min_new_tokens=3)
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
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about {t}."}],
                                        "reference": t}) + "\n" for t in topics))
    cfg = _config(tiny_model_dir, tmp_path / "out", "reward.judge=null",
                  "reward.function=test_ppo_rollouts.needs_reference", "train.max_steps=1", "lora.r=4",
                  "train.response_length=4", "train.num_ppo_epochs=1", "data.test_size=0.25", data=data)
    result = run_recipe(cfg)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    evaluation = json.loads((result.output_dir / "eval.json").read_text())
    assert {"eval_score", "eval_score_reference", "eval_score_gain"} <= set(evaluation)
