"""QLoRA training: one model builder (``model.build_model``), typed configs, the TRL recipes sft/rm/dpo/kto
(``recipes``), our own RL loop (``rl/``: PPO), and what every run writes (``outputs``).

Schema level only (DESIGN.md §1): imports rlaif.schema/formats/adapters/models and the backend protocol
(rlaif.backends.base), never rlaif.pipeline or rlaif.steps or a backend module; the dataset on disk or on the Hub is
the only contract with the data half. Submodules are imported where used, so importing this package stays free of
torch.
"""
