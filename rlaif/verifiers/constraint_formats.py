"""The IFEval-family constraint types on case, format, and the response's start and end (the counting and keyword
types, and the base class, are in rlaif.verifiers.constraint_types)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import Field

from rlaif.verifiers.constraint_types import (
    _BULLET,
    _FENCE,
    _HIGHLIGHT,
    _PLACEHOLDER,
    _TITLE,
    _WORD,
    Constraint,
    _Count,
    _relation_words,
)

_PHRASES_START = ["My answer is", "Here is", "In short", "To begin", "Let me explain"]
_PHRASES_END = ["Is there anything else I can help with?", "Any other questions?", "That is all.", "Peace out."]
_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


class AllLowercase(Constraint):
    type: Literal["all_lowercase"] = "all_lowercase"

    def check(self, response: str) -> bool:
        return response.islower()

    def describe(self) -> str:
        return (
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
        )


class AllUppercase(Constraint):
    type: Literal["all_uppercase"] = "all_uppercase"

    def check(self, response: str) -> bool:
        return response.isupper()

    def describe(self) -> str:
        return "Your entire response should be in English, and in all capital letters."


class CapitalWordFrequency(_Count):
    type: Literal["capital_word_frequency"] = "capital_word_frequency"
    low, high = (2, 10), (2, 10)

    def count(self, response: str) -> int:
        return sum(1 for w in _WORD.findall(response) if w.isupper())

    def describe(self) -> str:
        return (
            f"In your response, words with all capital letters should appear {_relation_words(self.relation)} "
            f"{self.num} times."
        )


class StartsWith(Constraint):
    type: Literal["starts_with"] = "starts_with"
    phrase: str = Field(min_length=1)

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.phrase.strip().lower())

    def describe(self) -> str:
        return f"Start your response with the exact phrase '{self.phrase}'."

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "starts_with", "phrase": rng.choice(_PHRASES_START)}


class EndsWith(Constraint):
    type: Literal["ends_with"] = "ends_with"
    phrase: str = Field(min_length=1)

    def check(self, response: str) -> bool:
        return response.strip().lower().endswith(self.phrase.strip().lower())

    def describe(self) -> str:
        return f"Finish your response with this exact phrase: '{self.phrase}'. No other words should follow it."

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "ends_with", "phrase": rng.choice(_PHRASES_END)}


class JsonFormat(Constraint):
    type: Literal["json_format"] = "json_format"

    def check(self, response: str) -> bool:
        text = _FENCE.sub("", response.strip())
        if not text:
            return False
        try:
            json.loads(text)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        return "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."


class BulletCount(Constraint):
    type: Literal["bullet_count"] = "bullet_count"
    num: int = Field(ge=1)

    def check(self, response: str) -> bool:
        return len(_BULLET.findall(response)) == self.num

    def describe(self) -> str:
        return (
            f"Your answer must contain exactly {self.num} bullet points. Use the markdown bullet points such as:\n"
            "* This is point 1.\n* This is point 2"
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "bullet_count", "num": rng.randint(2, 6)}


class SectionCount(Constraint):
    type: Literal["section_count"] = "section_count"
    marker: Literal["Section", "SECTION", "Part", "PART", "Chapter"] = "Section"
    num: int = Field(ge=1)

    def check(self, response: str) -> bool:
        parts = re.split(rf"\s?{self.marker}\s?\d+\s?", response, flags=re.IGNORECASE)
        return len(parts) - 1 >= self.num

    def describe(self) -> str:
        return (
            f"Your response must have {self.num} sections. Mark the beginning of each section with {self.marker} X, "
            f"such as: {self.marker} 1"
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "section_count", "marker": rng.choice(["Section", "Part"]), "num": rng.randint(2, 5)}


class PlaceholderCount(_Count):
    type: Literal["placeholder_count"] = "placeholder_count"
    low, high = (1, 4), (1, 4)

    def count(self, response: str) -> int:
        return len(_PLACEHOLDER.findall(response))

    def describe(self) -> str:
        return (
            f"The response must contain {_relation_words(self.relation)} {self.num} placeholders represented by "
            "square brackets, such as [address]."
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "placeholder_count", "relation": "at_least", "num": rng.randint(*cls.low)}


class HighlightedSections(_Count):
    type: Literal["highlighted_sections"] = "highlighted_sections"
    low, high = (1, 4), (1, 4)

    def count(self, response: str) -> int:
        return sum(1 for h in _HIGHLIGHT.findall(response) if h.strip("*").strip())

    def describe(self) -> str:
        return (
            f"Highlight {_relation_words(self.relation)} {self.num} sections in your answer with markdown, i.e. "
            "*highlighted section*."
        )

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "highlighted_sections", "relation": "at_least", "num": rng.randint(*cls.low)}


class NoCommas(Constraint):
    type: Literal["no_commas"] = "no_commas"

    def check(self, response: str) -> bool:
        return "," not in response and "\uff0c" not in response

    def describe(self) -> str:
        return "In your entire response, refrain from the use of any commas."


class Quotation(Constraint):
    type: Literal["quotation"] = "quotation"

    def check(self, response: str) -> bool:
        text = response.strip()
        return len(text) > 1 and text[0] == '"' and text[-1] == '"'

    def describe(self) -> str:
        return "Wrap your entire response with double quotation marks."


class Title(Constraint):
    type: Literal["title"] = "title"

    def check(self, response: str) -> bool:
        return any(t[2:-2].strip() for t in _TITLE.findall(response))

    def describe(self) -> str:
        return "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."


class Postscript(Constraint):
    type: Literal["postscript"] = "postscript"
    marker: Literal["P.S.", "P.P.S."] = "P.S."

    def check(self, response: str) -> bool:
        pattern = r"\s*p\.\s?p\.\s?s\..*$" if self.marker == "P.P.S." else r"\s*p\.\s?s\..*$"
        return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None

    def describe(self) -> str:
        return f"At the end of your response, please explicitly add a postscript starting with {self.marker}"

    @classmethod
    def sample(cls, rng: random.Random, words: Iterator[str]) -> dict:
        return {"type": "postscript", "marker": rng.choice(["P.S.", "P.P.S."])}


class TwoResponses(Constraint):
    type: Literal["two_responses"] = "two_responses"

    def check(self, response: str) -> bool:
        parts = response.split("******")
        return len(parts) == 2 and all(p.strip() for p in parts) and parts[0].strip() != parts[1].strip()

    def describe(self) -> str:
        return (
            "Give two different responses. Responses and only responses should be separated by 6 asterisk symbols: "
            "******."
        )


class RepeatPrompt(Constraint):
    type: Literal["repeat_prompt"] = "repeat_prompt"
    prompt_to_repeat: str = Field(min_length=1)
    sampled: ClassVar[bool] = False  # its argument is the prompt itself: attach it where the prompt is known

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())

    def describe(self) -> str:
        return (
            "First repeat the request word for word without change, then give your answer (1. do not say any words "
            "or characters before repeating the request; 2. the request you need to repeat does not include this "
            "sentence)"
        )


class ConstrainedResponse(Constraint):
    type: Literal["constrained_response"] = "constrained_response"

    def check(self, response: str) -> bool:
        return any(option in response for option in _CONSTRAINED)

    def describe(self) -> str:
        return f"Answer with one of the following options: {', '.join(repr(o) for o in _CONSTRAINED)}"
