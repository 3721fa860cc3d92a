"""Answer scoring (docs/protocol.md §6): MCQ, TR, NUM, SIZE, and FF through an optional LLM judge.

``score`` raises :class:`ActionError` for an answer the protocol rejects as an invalid action
(a TR answer that is not JSON, ...). Ground-truth problems are reported as ``GT_JSON_PARSE`` /
``UNKNOWN_QTYPE``; :func:`check_ground_truth` lets callers catch them before an episode starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from omniagent_jax.agent import prompts
from omniagent_jax.agent.errors import ActionError, ErrorCode
from omniagent_jax.agent.limits import FF_MAX_ANSWER_CHARS

McqMode = Literal["strict", "lenient"]
MCQ_MODES = ("strict", "lenient")

# "won" thresholds and the eval summaries' "correct" rule.
WIN_THRESHOLD = 0.5
CORRECT_THRESHOLD = 0.5

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
# Lenient MCQ: an option letter at the start, optionally in parentheses, followed by the end of
# the text, punctuation or whitespace ("A", "a", "A.", "(B)", "C) text", "D: text").
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:$|[\s.):,;\]])")
# MRA tolerances 1 - θ for θ ∈ {0.50, 0.55, …, 0.95}, written as exact decimals.
SIZE_TOLERANCES = tuple(round(1.0 - (0.50 + 0.05 * i), 2) for i in range(10))
SIZE_EPS = 1e-8


def major_type(question_type: str) -> str:
    """``MCQ_LongVR-Short`` → ``MCQ``: the part before the first ``_``, upper-cased."""
    return str(question_type).split("_", 1)[0].upper()


def is_correct(reward: float) -> bool:
    """Eval summaries count a sample as correct when its reward is > 0.5."""
    return reward > CORRECT_THRESHOLD


class Judge(Protocol):
    """Decides whether a free-form prediction matches the ground truth: returns 1.0 or 0.0."""

    def __call__(self, question: str, prediction: str, answer: str) -> float: ...


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    reward: float
    won: bool
    # False when no score could be given: FF without a judge, or no ground truth at all.
    scored: bool = True

    def __float__(self) -> float:
        return self.reward


# ---------------------------------------------------------------------------------------------- MCQ
def mcq_letter(content: str, mode: McqMode = "strict") -> str:
    """The letter a prediction names: strict = the whole stripped, upper-cased text (the reference);
    lenient = a leading option letter as described at ``_LEADING_LETTER``."""
    text = content.strip().upper()
    if mode == "strict":
        return text
    if mode != "lenient":
        raise ValueError(f"mcq_mode must be one of {MCQ_MODES}, got {mode!r}")
    m = _LEADING_LETTER.match(text)
    return m.group(1) if m else text


def score_mcq(prediction: str, answer: str, mode: McqMode = "strict") -> ScoreResult:
    gt = answer.strip().upper()[:1]
    won = bool(gt) and mcq_letter(prediction, mode) == gt
    return ScoreResult(1.0 if won else 0.0, won)


# ----------------------------------------------------------------------------------------------- TR
def _spans(value: Any, code: ErrorCode) -> list[tuple[float, float]]:
    """A flat ``[s, e]`` or a list of ``[s, e]`` pairs → list of (s, e); anything else raises ``code``."""
    def number(x: Any) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ActionError(code, f"Invalid span format: {value!r}")
        return float(x)

    if not isinstance(value, (list, tuple)):
        raise ActionError(code, f"Invalid span format: {value!r}")
    if not value:
        return []
    if len(value) == 2 and not isinstance(value[0], (list, tuple)):
        return [(number(value[0]), number(value[1]))]
    out = []
    for pair in value:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ActionError(code, f"Invalid span format: {value!r}")
        out.append((number(pair[0]), number(pair[1])))
    return out


def merge_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of overlapping (or touching) spans, sorted by start."""
    merged: list[list[float]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def temporal_iou(pred: Sequence[tuple[float, float]], gt: Sequence[tuple[float, float]]) -> float:
    """Union IoU over merged spans: Σ∩ / (|pred| + |gt| − Σ∩); both empty → 1, one empty → 0."""
    if not pred and not gt:
        return 1.0
    if not pred or not gt:
        return 0.0
    p, g = merge_spans(pred), merge_spans(gt)
    inter = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in p for s2, e2 in g)
    union = sum(e - s for s, e in p) + sum(e - s for s, e in g) - inter
    return inter / union if union > 0 else 0.0


def parse_tr_ground_truth(answer: Any) -> list[tuple[float, float]]:
    """TR ground truth: spans or their JSON text (``"[[s, e], ...]"`` or a flat ``"[s, e]"``)."""
    raw = answer
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            pass
    if not isinstance(raw, (list, tuple)):
        raise ActionError(ErrorCode.GT_JSON_PARSE, prompts.detail_gt_spans(raw))
    return _spans(raw, ErrorCode.GT_JSON_PARSE)


def score_tr(prediction: str, answer: Any) -> ScoreResult:
    try:
        pred_raw = json.loads(prediction)
    except (ValueError, RecursionError) as e:
        raise ActionError(ErrorCode.ANSWER_JSON_PARSE, str(e)) from None
    gt = parse_tr_ground_truth(answer)
    pred = _spans(pred_raw, ErrorCode.SPAN_FORMAT)
    # A reversed span rejects the whole prediction (reward 0), as in the reference: it is a
    # well-formed answer, so the episode ends normally instead of taking the retry path.
    if any(s > e for s, e in pred):
        return ScoreResult(0.0, False)
    iou = temporal_iou(pred, gt)
    return ScoreResult(iou, iou >= WIN_THRESHOLD)


# ------------------------------------------------------------------------------------- NUM / SIZE
def first_number(text: Any) -> float | None:
    m = _NUMBER.search(str(text))
    return float(m.group(0)) if m else None


def _gt_number(answer: Any) -> float:
    gt = answer[0] if isinstance(answer, (list, tuple)) and answer else answer
    value = first_number(gt)
    if value is None:
        raise ActionError(ErrorCode.GT_JSON_PARSE, prompts.detail_gt_number(gt))
    return value


def _pred_number(prediction: str) -> float:
    value = first_number(prediction)
    if value is None:
        raise ActionError(ErrorCode.ANSWER_NOT_STRING, prompts.DETAIL_NUMBER_IN_ANSWER)
    return value


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """Mean over θ ∈ {0.50, …, 0.95} of ``|p − g| / (|g| + 1e-8) < 1 − θ`` (in float64).

    The reference computes this in float32, so at an exact boundary (relative error exactly
    1 − θ) its result can differ from ours by one threshold.
    """
    rel = abs(pred - gt) / (abs(gt) + SIZE_EPS)
    return sum(rel < tol for tol in SIZE_TOLERANCES) / len(SIZE_TOLERANCES)


def score_num(prediction: str, answer: Any) -> ScoreResult:
    gt = _gt_number(answer)
    won = round(_pred_number(prediction), 2) == round(gt, 2)
    return ScoreResult(1.0 if won else 0.0, won)


def score_size(prediction: str, answer: Any) -> ScoreResult:
    gt = _gt_number(answer)
    mra = mean_relative_accuracy(_pred_number(prediction), gt)
    return ScoreResult(mra, mra >= WIN_THRESHOLD)


# ----------------------------------------------------------------------------------------------- FF
def score_ff(prediction: str, answer: Any, *, question: str = "", judge: Judge | None = None) -> ScoreResult:
    """FF: 0.0 and ``scored=False`` without a judge; answers of ≥ 1000 characters score 0."""
    text = prediction.strip()
    if judge is None:
        return ScoreResult(0.0, False, scored=False)
    if len(text) >= FF_MAX_ANSWER_CHARS:
        return ScoreResult(0.0, False)
    gt = answer if isinstance(answer, str) else (answer[0] if answer else "")
    reward = float(judge(question, text, str(gt)))
    return ScoreResult(reward, reward >= WIN_THRESHOLD)


# ------------------------------------------------------------------------------------------ dispatch
def score(
    question_type: str,
    prediction: str,
    answer: Any,
    *,
    mcq_mode: McqMode = "strict",
    judge: Judge | None = None,
    question: str = "",
) -> ScoreResult:
    """Score one answer. ``answer=None`` (no ground truth) gives an unscored 0.0."""
    qtype = major_type(question_type)
    if qtype not in prompts.QUESTION_TYPES:
        raise ActionError(ErrorCode.UNKNOWN_QTYPE, f"unknown question type {question_type!r}")
    if not isinstance(prediction, str):
        raise ActionError(ErrorCode.ANSWER_NOT_STRING, prompts.MSG_ANSWER_CONTENT)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return ScoreResult(0.0, False, scored=False)
    if qtype == "MCQ":
        return score_mcq(prediction, str(answer), mcq_mode)
    if qtype == "TR":
        return score_tr(prediction, answer)
    if qtype == "NUM":
        return score_num(prediction, answer)
    if qtype == "SIZE":
        return score_size(prediction, answer)
    return score_ff(prediction, answer, question=question, judge=judge)


def check_ground_truth(question_type: str, answer: Any, options: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` if a sample's type/answer/options cannot be scored (before an episode)."""
    qtype = major_type(question_type)
    if qtype not in prompts.QUESTION_TYPES:
        raise ValueError(f"unknown question_type {question_type!r}; expected one of {', '.join(prompts.QUESTION_TYPES)}")
    if qtype == "MCQ" and not options:
        raise ValueError("an MCQ question needs options")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return
    try:
        if qtype == "TR":
            parse_tr_ground_truth(answer)
        elif qtype in ("NUM", "SIZE"):
            _gt_number(answer)
    except ActionError as e:
        raise ValueError(f"bad {qtype} answer {answer!r}: {e.detail}") from None
    if qtype == "MCQ" and not str(answer).strip()[:1].isalpha():
        raise ValueError(f"bad MCQ answer {answer!r}: expected an option letter")
