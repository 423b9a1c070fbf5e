"""The IFEval-family constraint types (Zhou et al. 2023, arXiv:2311.07911; Tülu 3's RLVR set): one pydantic model
per type holding its arguments (extra keys forbidden, strict types), with ``check`` (does a response satisfy it?),
``describe`` (the instruction sentence appended to a prompt) and ``sample`` (arguments drawn from sensible ranges).

Checks follow IFEval's reference implementation where it is unambiguous (paragraphs split on ``***``, bullets are
lines starting ``*`` or ``-``, highlights ``*like this*``, keywords case-insensitive, P.S. lines), with these choices
of ours: words are ``\\w+`` runs (unicode-aware), sentences are runs of text ending in ``.``, ``!`` or ``?``;
keywords match whole words; counts take a ``relation`` of at_least / at_most / exactly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Relation = Literal["at_least", "at_most", "exactly"]
_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"[^.!?]*\w[^.!?]*(?:[.!?]+|$)")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")
_BULLET = re.compile(r"^\s*(?:\*[^*]|-\s).*$", re.MULTILINE)
_HIGHLIGHT = re.compile(r"\*\*[^\n*]*\*\*|\*[^\n*]*\*")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\]")
_TITLE = re.compile(r"<<[^\n]+>>")
_FENCE = re.compile(r"^```(?:json|JSON)?\s*|\s*```$")


def holds(count: int, relation: str, num: int) -> bool:
    return count >= num if relation == "at_least" else count <= num if relation == "at_most" else count == num


def _relation_words(relation: str) -> str:
    return relation.replace("_", " ")


def _keyword(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


class Constraint(BaseModel):
    """Base of every constraint type: ``type`` names it in a spec; the rest are its arguments."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    type: str
    sampled: ClassVar[bool] = True  # drawn by sample_constraints (False: needs the prompt, or no natural range)

    def check(self, response: str) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": cls.model_fields["type"].default}


class _Count(Constraint):
    relation: Relation = "at_least"
    num: int = Field(ge=0)
    low: ClassVar[tuple[int, int]] = (1, 5)  # at_least range for sample()
    high: ClassVar[tuple[int, int]] = (3, 10)  # at_most range

    def count(self, response: str) -> int:
        raise NotImplementedError

    def check(self, response: str) -> bool:
        return holds(self.count(response), self.relation, self.num)

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        relation = rng.choice(["at_least", "at_most"])
        num = rng.randint(*(cls.low if relation == "at_least" else cls.high))
        return {"type": cls.model_fields["type"].default, "relation": relation, "num": num}


class WordCount(_Count):
    type: Literal["word_count"] = "word_count"
    low, high = (50, 300), (50, 300)

    def count(self, response: str) -> int:
        return len(_WORD.findall(response))

    def describe(self) -> str:
        return f"Answer with {_relation_words(self.relation)} {self.num} words."


class SentenceCount(_Count):
    type: Literal["sentence_count"] = "sentence_count"
    low, high = (2, 8), (3, 15)

    def count(self, response: str) -> int:
        return len(_SENTENCE.findall(_DECIMAL_POINT.sub("_", response)))  # 3.5 is one number, not two sentences

    def describe(self) -> str:
        return f"Your response should contain {_relation_words(self.relation)} {self.num} sentences."


class ParagraphCount(Constraint):
    type: Literal["paragraph_count"] = "paragraph_count"
    num: int = Field(ge=1)

    def check(self, response: str) -> bool:
        paragraphs = _PARAGRAPH_DIVIDER.split(response.strip())
        return len(paragraphs) == self.num and all(p.strip() for p in paragraphs)

    def describe(self) -> str:
        return (
            f"There should be exactly {self.num} paragraphs. Paragraphs are separated with the markdown divider: ***"
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "paragraph_count", "num": rng.randint(2, 5)}


class NthParagraphFirstWord(Constraint):
    type: Literal["nth_paragraph_first_word"] = "nth_paragraph_first_word"
    num_paragraphs: int = Field(ge=1)
    nth_paragraph: int = Field(ge=1)
    first_word: str = Field(pattern=r"^\w+$")

    def check(self, response: str) -> bool:
        paragraphs = [p for p in re.split(r"\n\s*\n", response.strip()) if p.strip()]
        if len(paragraphs) != self.num_paragraphs or self.nth_paragraph > len(paragraphs):
            return False
        first = _WORD.search(paragraphs[self.nth_paragraph - 1])
        return first is not None and first.group().lower() == self.first_word.lower()

    def describe(self) -> str:
        return (
            f"There should be {self.num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated with "
            f"each other by two new lines. Paragraph {self.nth_paragraph} must start with the word {self.first_word}."
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        num = rng.randint(2, 5)
        return {
            "type": cls.model_fields["type"].default,
            "num_paragraphs": num,
            "nth_paragraph": rng.randint(1, num),
            "first_word": next(words),
        }


class KeywordsInclude(Constraint):
    type: Literal["keywords_include"] = "keywords_include"
    keywords: list[str] = Field(min_length=1)

    def check(self, response: str) -> bool:
        return all(_keyword(k).search(response) for k in self.keywords)

    def describe(self) -> str:
        return f"Include keywords {', '.join(self.keywords)} in the response."

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "keywords_include", "keywords": [next(words) for _ in range(rng.randint(1, 3))]}


class KeywordsExclude(Constraint):
    type: Literal["keywords_exclude"] = "keywords_exclude"
    keywords: list[str] = Field(min_length=1)

    def check(self, response: str) -> bool:
        return not any(_keyword(k).search(response) for k in self.keywords)

    def describe(self) -> str:
        return f"Do not include keywords {', '.join(self.keywords)} in the response."

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "keywords_exclude", "keywords": [next(words) for _ in range(rng.randint(1, 3))]}


class KeywordFrequency(_Count):
    type: Literal["keyword_frequency"] = "keyword_frequency"
    keyword: str = Field(min_length=1)
    low, high = (1, 4), (1, 3)

    def count(self, response: str) -> int:
        return len(_keyword(self.keyword).findall(response))

    def describe(self) -> str:
        relation = _relation_words(self.relation)
        return f"In your response, the word {self.keyword} should appear {relation} {self.num} times."

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {**super().sample(rng, words), "keyword": next(words)}


class LetterFrequency(_Count):
    type: Literal["letter_frequency"] = "letter_frequency"
    letter: str = Field(pattern=r"^[^\W\d_]$")
    low, high = (3, 12), (3, 12)

    def count(self, response: str) -> int:
        return response.lower().count(self.letter.lower())

    def describe(self) -> str:
        return (
            f"In your response, the letter {self.letter} should appear {_relation_words(self.relation)} "
            f"{self.num} times."
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        # at_least only, on common letters: an at_most bound could contradict the keywords drawn beside it.
        return {
            "type": "letter_frequency",
            "relation": "at_least",
            "num": rng.randint(*cls.low),
            "letter": rng.choice("aeinorst"),
        }
