"""Plausible wrong answers to every exercise, the mistakes students make with its formula or algorithm; each must
fail at least one of its exercise's graders (tests/test_exercises.py). WRONG[exercise] is a list of answers, each
{"file.py:function": the source of a wrong def, ...}; functions not named keep the reference."""

from wrong_answers_calrec import WRONG_CALREC
from wrong_answers_maml import WRONG_MAML
from wrong_answers_model import WRONG_MODEL

WRONG = {**WRONG_MODEL, **WRONG_CALREC, **WRONG_MAML}
