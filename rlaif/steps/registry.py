"""Step registry: type name -> "module:Class". Plain dict, no import side effects; user plugins by dotted path."""

from __future__ import annotations

from rlaif.registry import UnknownComponent, resolve_component
from rlaif.steps.base import Step

STEPS: dict[str, str] = {
    "load": "rlaif.steps.sources:Load",
    "inline": "rlaif.steps.sources:Inline",
    "generate_responses": "rlaif.steps.generate:GenerateResponses",
    "human_preferences": "rlaif.steps.human:HumanPreferences",
    "mix": "rlaif.steps.human:Mix",
    "self_instruct": "rlaif.steps.instructions:SelfInstruct",
    "evol_instruct": "rlaif.steps.evol:EvolInstruct",
    "magpie": "rlaif.steps.generate:Magpie",
    "reward_model_score": "rlaif.steps.scoring:RewardModelScore",
    "best_of_n": "rlaif.steps.scoring:BestOfN",
    "make_pairs": "rlaif.steps.pairs:MakePairs",
    "pairwise_judge": "rlaif.steps.judges:PairwiseJudge",
    "rating_judge": "rlaif.steps.judges:RatingJudge",
    "constitutional_judge": "rlaif.steps.constitutional:ConstitutionalJudge",
    "critique_revise": "rlaif.steps.critique:CritiqueRevise",
    "dedup": "rlaif.steps.dedup:Dedup",
    "length": "rlaif.steps.filters:Length",
    "judge_filter": "rlaif.steps.filters:JudgeFilter",
    "decontaminate": "rlaif.steps.decontaminate:Decontaminate",
    "expression": "rlaif.steps.expression:Expression",
    "verify": "rlaif.steps.verify:Verify",
    "add_constraints": "rlaif.steps.verify:AddConstraints",
}


def step_class(type_name: str) -> type[Step]:
    """The class for a registry name, or for a dotted path ``my_pkg.module.MyStep`` (a user plugin)."""
    cls = resolve_component(STEPS, type_name, "step type")
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise UnknownComponent(f"{type_name!r} is not a Step subclass")
    return cls
