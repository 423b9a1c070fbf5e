"""Names every engine test shares. A module of its own, not conftest: with two conftest.py files (tests/ and
tests/report/) `from conftest import ...` binds whichever pytest loaded last under that name."""

BUILTIN = "builtin:smollm2-135m-instruct"
# Small enough that a context-overflow prompt is cheap to build, large enough for judge prompts later.
TEST_MAX_MODEL_LEN = 2048
