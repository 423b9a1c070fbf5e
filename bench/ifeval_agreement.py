"""Agreement of rlaif's IFEval-family checks with Google's IFEval reference checks, on the responses of
tests/verifiers/test_constraints.py and on synthetic responses from bench/verify.py.

    .venv/bin/pip download --no-deps if-verifiable==0.1.2 -d /tmp/ifv && unzip -q /tmp/ifv/*.whl -d /tmp/ifv/ext
    .venv/bin/python bench/ifeval_agreement.py --reference /tmp/ifv/ext [--rows 20000]

The reference is the copy of Google's code in ``if-verifiable`` (its ``ifeval/instructions.py``), unpacked, not
installed: its imports are stubbed where they cannot run here — nltk's word tokenizer by IFEval's own ``\\w+`` rule
(nltk's sentence model is fetched from the network, so ``sentence_count`` is not compared), language detection
answering English, immutabledict as dict. Types without a counterpart (``sentence_count``, ``starts_with``) and
``exactly`` relations (IFEval has none) are skipped; ``at_most N`` is IFEval's ``less than N+1``. Prints agreement
with its 95% Wilson interval and n, and examples of each disagreement.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "verifiers"), str(ROOT / "bench")]

from rlaif.rates import Rate  # noqa: E402
from rlaif.verifiers.constraints import check  # noqa: E402


def _stub_imports(reference: Path) -> types.ModuleType:
    class RegexpTokenizer:
        def __init__(self, pattern: str) -> None:
            self.pattern = re.compile(pattern)

        def tokenize(self, text: str) -> list[str]:
            return self.pattern.findall(text)

    nltk = types.ModuleType("nltk")
    nltk.tokenize = types.SimpleNamespace(RegexpTokenizer=RegexpTokenizer)
    nltk.word_tokenize = lambda text: re.findall(r"\w+|[^\w\s]+", text)
    nltk.data = types.SimpleNamespace(load=lambda *_: None)
    langdetect = types.ModuleType("langdetect")
    langdetect.detect, langdetect.LangDetectException = (lambda _: "en"), Exception
    immutabledict = types.ModuleType("immutabledict")
    immutabledict.immutabledict = dict
    sys.modules.update({"nltk": nltk, "langdetect": langdetect, "immutabledict": immutabledict})
    for name, path in (("if_verifiable", reference / "if_verifiable"), ("if_verifiable.ifeval", None)):
        package = types.ModuleType(name)
        package.__path__ = [str(path or reference / "if_verifiable" / "ifeval")]
        sys.modules[name] = package
    from if_verifiable.ifeval import instructions

    return instructions


def _relation(spec: dict) -> tuple[str, int] | None:
    relation, num = spec.get("relation", "at_least"), spec.get("num", 0)
    return {"at_least": ("at least", num), "at_most": ("less than", num + 1)}.get(relation)


def reference_checker(ref: types.ModuleType, spec: dict):
    """The reference instruction for ``spec`` with its arguments, or None when it has no counterpart."""
    t, rel = spec["type"], _relation(spec)
    table = {
        "word_count": lambda: (ref.NumberOfWords, {"num_words": rel[1], "relation": rel[0]}),
        "paragraph_count": lambda: (ref.ParagraphChecker, {"num_paragraphs": spec["num"]}),
        "nth_paragraph_first_word": lambda: (ref.ParagraphFirstWordCheck, {
            k: spec[k] for k in ("num_paragraphs", "nth_paragraph", "first_word")}),
        "keywords_include": lambda: (ref.KeywordChecker, {"keywords": spec["keywords"]}),
        "keywords_exclude": lambda: (ref.ForbiddenWords, {"forbidden_words": spec["keywords"]}),
        "keyword_frequency": lambda: (ref.KeywordFrequencyChecker, {
            "keyword": spec["keyword"], "frequency": rel[1], "relation": rel[0]}),
        "letter_frequency": lambda: (ref.LetterFrequencyChecker, {
            "letter": spec["letter"], "let_frequency": rel[1], "let_relation": rel[0]}),
        "all_lowercase": lambda: (ref.LowercaseLettersEnglishChecker, {}),
        "all_uppercase": lambda: (ref.CapitalLettersEnglishChecker, {}),
        "capital_word_frequency": lambda: (ref.CapitalWordFrequencyChecker, {
            "capital_frequency": rel[1], "capital_relation": rel[0]}),
        "ends_with": lambda: (ref.EndChecker, {"end_phrase": spec["phrase"]}),
        "json_format": lambda: (ref.JsonFormat, {}),
        "bullet_count": lambda: (ref.BulletListChecker, {"num_bullets": spec["num"]}),
        "section_count": lambda: (ref.SectionChecker, {
            "section_spliter": spec.get("marker", "Section"), "num_sections": spec["num"]}),
        "placeholder_count": lambda: (ref.PlaceholderChecker, {"num_placeholders": spec["num"]}),
        "highlighted_sections": lambda: (ref.HighlightSectionChecker, {"num_highlights": spec["num"]}),
        "no_commas": lambda: (ref.CommaChecker, {}),
        "quotation": lambda: (ref.QuotationChecker, {}),
        "title": lambda: (ref.TitleChecker, {}),
        "postscript": lambda: (ref.PostscriptChecker, {"postscript_marker": spec.get("marker", "P.S.")}),
        "two_responses": lambda: (ref.TwoResponsesChecker, {}),
        "repeat_prompt": lambda: (ref.RepeatPromptThenAnswer, {"prompt_to_repeat": spec["prompt_to_repeat"]}),
        "constrained_response": lambda: (ref.ConstrainedResponseChecker, {}),
    }  # fmt: skip
    if t not in table or ("relation" in spec and rel is None) or ("num" in spec and rel is None):
        return None
    cls, kwargs = table[t]()
    instruction = cls(t)
    instruction.build_description(**kwargs)
    return instruction


def compare(ref: types.ModuleType, pairs: list[tuple[str, dict]], label: str) -> None:
    agree, n, differ = 0, 0, {}
    for response, spec in pairs:
        instruction = reference_checker(ref, spec)
        if instruction is None:
            continue
        theirs, ours = bool(instruction.check_following(response)), check(response, spec)
        n += 1
        agree += ours == theirs
        if ours != theirs:
            differ.setdefault(spec["type"], []).append((response[:60], ours, theirs))
    print(f"{label}: agree {agree}/{n} = {Rate(agree, n).short()} (95% Wilson)")
    for name, cases in sorted(differ.items()):
        print(f"  {name}: {len(cases)} differ (response, ours, reference), e.g. {cases[:2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the unpacked if-verifiable wheel")
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the reference logs every language check it cannot make
    ref = _stub_imports(args.reference)
    from test_constraints import CASES
    from verify import response

    compare(ref, [(r, spec) for spec, good, bad in CASES.values() for r in good + bad], "test responses")
    rng = random.Random(3)
    from rlaif.verifiers.constraints import sample_constraints

    rows = [(response(rng), sample_constraints(rng, rng.randint(1, 3))) for _ in range(args.rows)]
    compare(ref, [(text, spec) for text, specs in rows for spec in specs], "synthetic responses")


if __name__ == "__main__":
    main()
