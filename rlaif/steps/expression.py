"""The ``expression`` filter step and its small, safe predicate language, parsed here: never ``eval``/``exec``/``ast``.

Grammar (Python's precedence; comparisons chain like Python's ``0 < x < 5``)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand)*
    operand    := NUMBER | "-" NUMBER | STRING | True | False | None | NAME | "len" "(" expr ")"
                | "(" expr ")" | "[" [expr ("," expr)* [","]] "]"

A NAME is a column of the record. A column holding a conversation (a list of ``{role, content}`` messages, as
TRL's ``prompt``/``chosen``/``rejected``) reads as the text of its last message, so ``len(chosen)`` is the length
of the chosen response and ``'sorry' in chosen`` searches it. Nothing else is reachable: no attributes, no
subscripts, no calls but ``len``, no arithmetic. The tree is nested tuples; evaluation dispatches on the node kind
through a dict of functions.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rlaif.steps.base import BatchResult, Quarantine, Record, Step, StepContext, StepParams, filter_records

Node = tuple[Any, ...]

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|-)""",
    re.VERBOSE,
)
_WORDS = {"and", "or", "not", "in", "True", "False", "None", "len"}
_CONSTANTS = {"True": True, "False": False, "None": None}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
# Characters people reach for that the language deliberately lacks: say why instead of "unexpected character".
_FORBIDDEN = {
    ".": "attribute access ('.') is not allowed",
    "=": "use '==' to compare",
    "+": "arithmetic is not supported",
    "*": "arithmetic is not supported",
    "/": "arithmetic is not supported",
    "%": "arithmetic is not supported",
    "{": "dict and set literals are not supported",
    ":": "':' (slices, lambdas, dicts) is not supported",
}


class ExpressionError(ValueError):
    """A syntax error (with the 1-based position in the expression) or, at run time, an evaluation error."""


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, op, end, error (an untokenizable character; raised when parsed)
    text: str
    pos: int


@dataclass(frozen=True)
class Predicate:
    """A parsed predicate: ``columns`` are the record columns it reads (the step's required columns)."""

    text: str
    tree: Node
    columns: frozenset[str]

    def __call__(self, record: dict[str, Any]) -> bool:
        """Truth of the predicate on ``record``; raises TypeError/ExpressionError when it cannot be evaluated."""
        return bool(evaluate(self.tree, record))


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            # Not raised here: the parser raises when it reaches this token, so the leftmost problem is reported.
            char = text[pos]
            why = "unterminated string" if char in "'\"" else _FORBIDDEN.get(char, f"unexpected character {char!r}")
            tokens.append(Token("error", why, pos))
            break
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def parse(text: str) -> Predicate:
    """Parse ``text`` or raise ExpressionError naming the position of the first problem."""
    if not text.strip():
        raise ExpressionError("syntax error at position 1: the expression is empty")
    parser = _Parser(tokenize(text))
    try:
        tree = parser.expr()
    except RecursionError:
        raise ExpressionError("syntax error at position 1: the expression is nested too deeply") from None
    parser.expect_end()
    return Predicate(text, tree, frozenset(parser.columns))


class _Parser:
    """Recursive descent over the token list, one method per grammar rule."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.columns: set[str] = set()

    @property
    def tok(self) -> Token:
        token = self.tokens[self.i]
        if token.kind == "error":
            raise ExpressionError(f"syntax error at position {token.pos + 1}: {token.text}")
        return token

    def error(self, message: str, token: Token | None = None) -> ExpressionError:
        token = token or self.tok
        return ExpressionError(f"syntax error at position {token.pos + 1}: {message}")

    def take(self, *texts: str) -> Token | None:
        if self.tok.kind in ("op", "name") and self.tok.text in texts:
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def expect(self, text: str) -> None:
        if self.take(text) is None:
            raise self.error(f"expected {text!r}, found {_describe(self.tok)}")

    def expect_end(self) -> None:
        if self.tok.kind != "end":
            hints = {"(": " (only len(...) may be called)", "[": " (subscripts are not supported)"}
            raise self.error(f"unexpected {_describe(self.tok)}{hints.get(self.tok.text, '')}")

    def expr(self) -> Node:
        return self.binary("or", self.conjunction)

    def conjunction(self) -> Node:
        return self.binary("and", self.negation)

    def binary(self, word: str, operand: Callable[[], Node]) -> Node:
        items = [operand()]
        while self.take(word):
            items.append(operand())
        return items[0] if len(items) == 1 else (word, tuple(items))

    def negation(self) -> Node:
        if self.tok.text == "not" and self.tokens[self.i + 1].text != "in":
            self.i += 1
            return ("not", self.negation())
        return self.comparison()

    def comparison(self) -> Node:
        first = self.operand()
        rest: list[tuple[str, Node]] = []
        while True:
            if token := self.take("==", "!=", "<", "<=", ">", ">=", "in"):
                op = token.text
            elif self.tok.text == "not" and self.tokens[self.i + 1].text == "in":
                self.i += 2
                op = "not in"
            else:
                break
            rest.append((op, self.operand()))
        return ("cmp", first, tuple(rest)) if rest else first

    def operand(self) -> Node:
        token = self.tok
        self.i += 1
        if token.kind == "number":
            return ("const", _number(token.text))
        if token.text == "-" and self.tok.kind == "number":  # a negative literal; there is no other arithmetic
            self.i += 1
            return ("const", -_number(self.tokens[self.i - 1].text))
        if token.kind == "string":
            return ("const", _unescape(token.text))
        if token.kind == "name":
            return self.name(token)
        if token.text == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        if token.text == "[":
            return self.list_literal()
        raise self.error(f"expected a value (column, number, string, list, len(...)), found {_describe(token)}", token)

    def name(self, token: Token) -> Node:
        word = token.text
        if word in _CONSTANTS:
            return ("const", _CONSTANTS[word])
        if word == "len":
            self.expect("(")
            argument = self.expr()
            self.expect(")")
            return ("len", argument)
        if word in _WORDS or keyword.iskeyword(word):  # soft keywords (match, type) stay usable as column names
            raise self.error(f"the keyword {word!r} is not allowed here", token)
        if self.tok.text == "(":
            raise self.error(f"only len(...) may be called, not {word}(...)", token)
        self.columns.add(word)
        return ("col", word)

    def list_literal(self) -> Node:
        items: list[Node] = []
        while self.tok.text != "]":
            items.append(self.expr())
            if not self.take(","):
                break
        self.expect("]")
        return ("list", tuple(items))


def _number(text: str) -> float | int:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _unescape(quoted: str) -> str:
    body, out, i = quoted[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i : i + 2]))  # unknown escapes stay literal, as in Python
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _describe(token: Token) -> str:
    return "the end of the expression" if token.kind == "end" else repr(token.text)


# -- evaluation ------------------------------------------------------------------------------------------------
def column_value(record: dict[str, Any], name: str) -> Any:
    if name not in record:
        raise ExpressionError(f"the record has no column {name!r}")
    value = record[name]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value[-1]["content"]  # a conversation reads as its last message (TRL chosen/rejected)
    return value


def _and(node: Node, record: dict[str, Any]) -> bool:
    return all(evaluate(item, record) for item in node[1])  # all/any short-circuit, like Python's and/or


def _or(node: Node, record: dict[str, Any]) -> bool:
    return any(evaluate(item, record) for item in node[1])


def _compare(node: Node, record: dict[str, Any]) -> bool:
    left = evaluate(node[1], record)
    for op, operand in node[2]:
        right = evaluate(operand, record)
        if not COMPARISONS[op](left, right):
            return False
        left = right
    return True


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}

NODES: dict[str, Callable[[Node, dict[str, Any]], Any]] = {
    "const": lambda node, record: node[1],
    "col": lambda node, record: column_value(record, node[1]),
    "list": lambda node, record: [evaluate(item, record) for item in node[1]],
    "len": lambda node, record: len(evaluate(node[1], record)),
    "not": lambda node, record: not evaluate(node[1], record),
    "and": _and,
    "or": _or,
    "cmp": _compare,
}


def evaluate(node: Node, record: dict[str, Any]) -> Any:
    return NODES[node[0]](node, record)


# -- the step ------------------------------------------------------------------------------------------------
class ExpressionParams(StepParams):
    where: str = Field(description='keep records where this holds, e.g. "len(chosen) > 10 and score >= 4"')

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse(value)  # a syntax error names its position; the engine adds the file and line
        return value


class Expression(Step):
    """Keep records where ``where`` holds; drop the others with the reason "expression false".

    Inputs: the columns the expression names. Outputs: kept records, unchanged. Quarantined: "expression error"
    when it cannot be evaluated on a record (comparing text with a number, len of a number, a missing column); the
    detail says why. The language: comparisons (== != < <= > >= in, not in), and/or/not, parentheses, literals
    (numbers, strings, True/False/None, lists), column names and len(...): the grammar above.
    """

    Params = ExpressionParams
    params: ExpressionParams

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self.predicate: Predicate = parse(self.params.where)

    def required_columns(self) -> set[str]:
        return set(self.predicate.columns)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return filter_records(records, self.verdict)

    def verdict(self, record: Record) -> str | None:
        try:
            keep = self.predicate(record)
        except (TypeError, ExpressionError) as exc:
            raise Quarantine("expression error", f"{self.params.where!r}: {type(exc).__name__}: {exc}") from exc
        return None if keep else "expression false"
