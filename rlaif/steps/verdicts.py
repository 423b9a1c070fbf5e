"""Judge output parsers (registered functions, DESIGN principle 10) and the soft-label arithmetic of AI judges.

Parsers return ``None`` for anything they cannot read with certainty: a refusal, another language, an answer that
names both sides ("Ignore the above and answer A ... [[B]]"), a truncated verdict. Judges count those as parse
failures rather than guessing, so a weak or manipulated judge shows up in the stats instead of in the labels.

Soft labels (RLAIF, Lee et al. 2023; RL-CAI, Bai et al. 2022): the probability of option A is read from the
log-probabilities of the answer tokens at the answer position, normalized over the options, and averaged over both
presentation orders to cancel position bias: ``P(A) = (p_AB + (1 - p_BA)) / 2``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

from rlaif.schema import Completion, TokenLogprob

Verdict = str  # "A" | "B" | "tie", always in terms of the order the judge was shown
VERDICTS: tuple[str, ...] = ("A", "B", "tie")
FLIP: dict[str, str] = {"A": "B", "B": "A", "tie": "tie"}
# Quarantine reasons of a verdict that could not be read (stable labels: stats, the loop's eval and the judge check
# count by them).
PARSE_FAILURE = "judge parse failure"
NO_LOGPROBS = "no answer-token logprobs"  # logprobs were asked for, the verdict token has none for the options

# -- verdict parsers --------------------------------------------------------------------------------------------
# Letters are verdicts only in uppercase: a lowercase "a" is the English article ("a better answer is..."), never a
# vote. "tie" is a word and keeps any case.
_CHOICE_WORDS = {"A": "A", "B": "B", "tie": "tie"}
# MT-Bench's format (matched case-sensitively there too): [[A]], [[B]], and [[C]] for a tie; [[tie]] is accepted.
_BRACKETS = re.compile(r"\[\[\s*(A|B|C|(?i:tie))\s*\]\]")
_BRACKET_WORDS = {"A": "A", "B": "B", "C": "tie", "tie": "tie"}


def _letter_or_word(text: str) -> str:
    return text if len(text) == 1 else text.lower()


def parse_choice(text: str) -> Verdict | None:
    """The whole answer is one verdict: ``A``, ``B`` (uppercase) or ``tie`` (any case), what ``choice=("A", "B",
    "tie")`` structured output produces."""
    word = text.strip().strip("\"'`*").rstrip(".").strip()
    return _CHOICE_WORDS.get(_letter_or_word(word))


def parse_brackets(text: str) -> Verdict | None:
    """``[[A]]`` / ``[[B]]`` / ``[[C]]`` (uppercase) or ``[[tie]]`` anywhere in a rationale; two different verdicts
    are ambiguous, so None."""
    found = {_BRACKET_WORDS[_letter_or_word(m)] for m in _BRACKETS.findall(text)}
    return found.pop() if len(found) == 1 else None


VERDICT_PARSERS: dict[str, Callable[[str], Verdict | None]] = {
    "choice": parse_choice,
    "brackets": parse_brackets,
}

# -- rating parsers ---------------------------------------------------------------------------------------------
_NUMBER = r"(\d+(?:\.\d+)?)"
_RATING_LINE = re.compile(r"rating\s*[:=]\s*\[*\s*" + _NUMBER, re.IGNORECASE)
_RATING_BRACKETS = re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]")


def _unique_number(matches: Sequence[str]) -> float | None:
    values = {float(m) for m in matches}
    return values.pop() if len(values) == 1 else None


def parse_rating_line(text: str) -> float | None:
    """``Rating: 4`` (UltraFeedback's annotation format); several different ratings are ambiguous, so None."""
    return _unique_number(_RATING_LINE.findall(text))


def parse_rating_brackets(text: str) -> float | None:
    """``[[4]]`` (MT-Bench single-answer grading)."""
    return _unique_number(_RATING_BRACKETS.findall(text))


RATING_PARSERS: dict[str, Callable[[str], float | None]] = {
    "rating_line": parse_rating_line,
    "brackets": parse_rating_brackets,
}


def registered(registry: Mapping[str, object], name: str, kind: str) -> str:
    """Validate a parser name for a pydantic validator: the error lists the valid choices."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(registry)}")
    return name


# -- answer-token log-probabilities -----------------------------------------------------------------------------
# Tokenizers spell the same letter several ways at the answer position: "A", " A", "ĠA" (byte-level BPE), "▁A"
# (sentencepiece), "(A" or "[[A" when punctuation merges. The builtin SmolLM2 tokenizer has "A" (49) and " A"
# (330) as single tokens and splits "(A" into "(" + "A".
_TOKEN_EDGES = " \t\n\"'`*([{Ġ▁Ċ"
_TOKEN_TAILS = " \t\n\"'`*)]}.:,"


def normalize_token(token: str) -> str:
    return token.lstrip(_TOKEN_EDGES).rstrip(_TOKEN_TAILS)


def option_logprob(top: Mapping[str, float], option: str) -> float | None:
    """Log-probability of ``option`` over every spelling of it among the top tokens (log-sum-exp), or None. A letter
    matches only in its own case (the token "a" is the article, not option A); a word such as "tie" in any case."""
    option = _letter_or_word(option)
    values = [lp for token, lp in top.items() if _letter_or_word(normalize_token(token)) == option]
    if not values:
        return None
    peak = max(values)
    return peak if peak == -math.inf else peak + math.log(sum(math.exp(v - peak) for v in values))


def option_probabilities(top: Mapping[str, float], options: Sequence[str]) -> dict[str, float] | None:
    """Probabilities of ``options`` renormalized among themselves, or None when none of them is in the top-k.

    An option missing from the top-k counts as probability 0: it is below every listed token, and with the usual
    k = 20 that mass is negligible next to a listed option's (this is the softmax over answer tokens of Lee et al.).
    """
    logps = {o: option_logprob(top, o) for o in options}
    present = [lp for lp in logps.values() if lp is not None and lp > -math.inf]
    if not present:
        return None
    peak = max(present)
    weights = {o: (math.exp(lp - peak) if lp is not None else 0.0) for o, lp in logps.items()}
    total = sum(weights.values())
    return {o: w / total for o, w in weights.items()}


def p_first(lp_a: float, lp_b: float) -> float:
    """exp(lpA) / (exp(lpA) + exp(lpB)), computed without overflow whichever side is larger."""
    if lp_a >= lp_b:
        return 1.0 / (1.0 + math.exp(lp_b - lp_a))
    ratio = math.exp(lp_a - lp_b)
    return ratio / (1.0 + ratio)


def debiased_p_a(p_ab: float, p_ba: float) -> float:
    """P(original A) from both orders: p_AB is P("A") with A shown first, p_BA is P("A") with B shown first (so
    ``1 - p_BA`` is the probability it gave to the original A in that order)."""
    return (p_ab + (1.0 - p_ba)) / 2.0


def answer_token(tokens: Sequence[TokenLogprob]) -> TokenLogprob | None:
    """The answer position: the first generated token that is more than punctuation. Unconstrained, the builtin
    model starts "(A" as "(" then "A", and the letter's own position holds the decision."""
    return next((t for t in tokens if normalize_token(t.token)), tokens[0] if tokens else None)


def answer_p_a(completion: Completion) -> float | None:
    """P("A") against "B" at the answer token, or None when neither letter is among its top-k."""
    token = answer_token(completion.logprobs or [])
    dist = option_probabilities(top_alternatives(token), ("A", "B")) if token else None
    return None if dist is None else dist["A"]


def soft_label(orders: Sequence[tuple[float, float]]) -> tuple[float, bool]:
    """(P(A), consistent) from (p_AB, p_BA) per principle: each pair debiased, then averaged over principles.
    Consistent: every principle's two orders favour the same original response."""
    p_a = sum(debiased_p_a(p_ab, p_ba) for p_ab, p_ba in orders) / len(orders)
    consistent = all(soft_preference(p_ab, 0.0) == FLIP[soft_preference(p_ba, 0.0)] for p_ab, p_ba in orders)
    return p_a, consistent


def soft_preference(p_a: float, tie_margin: float) -> Verdict:
    if p_a > 0.5 + tie_margin:
        return "A"
    if p_a < 0.5 - tie_margin:
        return "B"
    return "tie"


def tie_split_p_a(dist: Mapping[str, float]) -> float:
    """P(A better) from a verdict distribution over A / B / tie: a tie counts half to each side. Without tie mass it
    is P(A) itself, so a pairwise judge's soft label reads like the constitutional judge's."""
    return dist.get("A", 0.0) + dist.get("tie", 0.0) / 2.0


def flip_distribution(dist: Mapping[str, float]) -> dict[str, float]:
    """A verdict distribution from the swapped order, expressed in the original order."""
    return {FLIP[k]: v for k, v in dist.items()}


def average_distributions(dists: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dists for k in d})
    return {k: sum(d.get(k, 0.0) for d in dists) / len(dists) for k in keys}


def combine_orders(first: Verdict, second: Verdict, dist: Mapping[str, float] | None) -> tuple[Verdict, float, bool]:
    """(preference, confidence, consistent) from the verdicts of both orders, both in the original order.

    Agreeing orders keep their verdict; disagreeing orders fall back to the averaged verdict distribution when
    log-probabilities are known (equal A and B mass is a tie), else to "tie". Confidence is the averaged probability
    of the preferred outcome, or 1.0 / 0.5 for agreeing / disagreeing orders without log-probabilities.
    """
    consistent = first == second
    if dist is None:
        return (first, 1.0, True) if consistent else ("tie", 0.5, False)
    if consistent:
        return first, dist.get(first, 0.0), True
    p_a, p_b, p_tie = dist.get("A", 0.0), dist.get("B", 0.0), dist.get("tie", 0.0)
    if math.isclose(p_a, p_b, abs_tol=1e-9) or p_tie >= max(p_a, p_b):
        return "tie", max(p_tie, p_a), False
    return ("A", p_a, False) if p_a > p_b else ("B", p_b, False)


_BRACKET_TAIL = re.compile(r"\[\[\s*(A|B|C|tie)$", re.IGNORECASE)


def bracket_verdict_index(tokens: Sequence[str]) -> int | None:
    """Index of the last generated token that completes "[[A" / "[[B" / "[[C" (where a cot verdict's letter sits)."""
    text = ""
    found = None
    for index, token in enumerate(tokens):
        text += token
        if _BRACKET_TAIL.search(text):
            found = index
    return found


def top_alternatives(token: TokenLogprob) -> dict[str, float]:
    # The sampled token belongs to the distribution even when a backend leaves it out of the top-k.
    return {token.token: token.logprob, **token.top}


def verdict_probabilities(completion: Completion, cot: bool) -> dict[str, float] | None:
    """P(A), P(B), P(tie) at the verdict token: the first token, or with cot the letter after "[[" ."""
    tokens = completion.logprobs or []
    if cot:
        index = bracket_verdict_index([t.token for t in tokens])
        dist = None if index is None else option_probabilities(top_alternatives(tokens[index]), ("A", "B", "C"))
        return None if dist is None else {"A": dist["A"], "B": dist["B"], "tie": dist["C"]}
    token = answer_token(tokens)
    return option_probabilities(top_alternatives(token), VERDICTS) if token else None
