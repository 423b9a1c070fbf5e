"""RL on one quantized base: PPO now (:mod:`rlaif.train.rl.ppo`), and what GRPO/RLOO will share with it.

- ``core``: the math as pure tensor functions (masks, KL, GAE, clipped losses);
- ``shared_base``: the policy, value, reference and reward roles as adapters on one base, and the value head;
- ``rollout``: samplers (HF generate on the shared base, or a vLLM backend through the backend protocol);
- ``rewards`` / ``judge_reward``: reward sources (rule functions, RM adapter, reward model, LLM judge);
- ``state``: the run, optimizer and schedule, prompt order, checkpoints; ``evaluate``: held-out eval and outputs.

Nothing here imports the TRL recipes; checkpoints, cards and push come from rlaif.train.outputs.
"""
