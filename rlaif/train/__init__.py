"""QLoRA training on TRL: one model builder (``model.build_model``), typed configs, recipes sft/rm/dpo/kto.

Schema level only (DESIGN.md §1): imports rlaif.schema/formats/adapters/models, never rlaif.pipeline or rlaif.steps;
the dataset on disk or on the Hub is the only contract with the data half. Submodules are imported where used, so
importing this package stays free of torch.
"""
