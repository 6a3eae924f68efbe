"""Evaluation metrics for the Cookbook datasets, in plain Python and numpy.

- Exact-match accuracy, normalised exactly as the Cookbook scripts (UCF-101, NLVR2, Hateful
  Memes) so our numbers compare with theirs.
- ANLS for DocVQA, case-insensitive like the official scorer (the Cookbook's is not).
- AUROC for Hateful Memes, its official metric, which the Cookbook never computes.

No torch and no scikit-learn: metrics must be importable and checkable anywhere, and each is
a few lines that the tests verify against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize_answer(text: str) -> str:
    """The Cookbook's normalisation, exactly: ``text.strip().strip('.').lower()``.

    Outer whitespace goes first, then outer dots, so ``" Yes. "`` becomes ``"yes"`` but a space
    before a dot survives: ``"cat ."`` becomes ``"cat "``. Kept as is, for comparable numbers.
    """
    return text.strip().strip(".").lower()


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer after :func:`normalize_answer` on both.

    This is what the Cookbook reports for UCF-101, NLVR2 and Hateful Memes (the official NLVR2
    metric is the same accuracy over "True"/"False" labels).
    """
    _check_pairs(predictions, answers)
    hits = sum(
        normalize_answer(p) == normalize_answer(a)
        for p, a in zip(predictions, answers, strict=True)
    )
    return hits / len(predictions)


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: fewest single-character inserts, deletes and substitutions."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for i, char in enumerate(first, start=1):
        current = [i]
        for j, other in enumerate(second, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Normalised Levenshtein similarity of one prediction to its best-matching answer.

    The DocVQA metric (Biten et al., 2019): NL = distance / max(len(a), len(p)); the score is
    ``1 - NL`` if ``NL < threshold`` else 0; the maximum over all ground-truth answers. Like the
    official scorer, both sides are lowercased and stripped of outer whitespace. The Cookbook's
    version is case-sensitive (it only strips the prediction of spaces and dots), so it scores
    "ITC Limited" against "itc limited" 0.64 where we score 1.0. Two empty strings are identical
    (1.0); an empty prediction against a non-empty answer scores 0. Callers strip trailing dots
    off generated text as the Cookbook does before calling this.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, got a single string")
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    predicted = prediction.strip().lower()
    best = 0.0
    for answer in answers:
        truth = answer.strip().lower()
        longest = max(len(truth), len(predicted))
        distance = edit_distance(truth, predicted) / longest if longest else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def mean_anls(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], threshold: float = 0.5
) -> float:
    """ANLS of a question set: the mean of :func:`anls` over the questions."""
    _check_pairs(predictions, answers)
    return sum(anls(p, a, threshold) for p, a in zip(predictions, answers, strict=True)) / len(
        predictions
    )


def auroc(labels: Sequence[int | bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Hateful Memes' official metric (Kiela et al., 2020), computed from the model's probability
    of the "hateful" answer; the Cookbook reports only accuracy. Exact, via the Mann-Whitney U
    statistic with average ranks, so a tied positive/negative pair counts one half:
    ``AUC = (sum of positive ranks - P(P+1)/2) / (P * N)``. Labels are 0/1; both must occur.
    """
    y, s = _labels_and_scores(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        only = "1 (positive)" if positives else "0 (negative)"
        raise ValueError(f"AUROC needs both classes, but all {len(y)} labels are {only}")
    ranks = _average_ranks(s)
    u_statistic = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u_statistic / (positives * negatives))


def accuracy_at(
    labels: Sequence[int | bool], scores: Sequence[float], threshold: float = 0.5
) -> float:
    """Accuracy when a score at or above ``threshold`` means positive (Hateful Memes' second
    official metric, from the same probabilities as :func:`auroc`)."""
    y, s = _labels_and_scores(labels, scores)
    return float(np.mean((s >= threshold) == (y == 1)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def _labels_and_scores(
    labels: Sequence[int | bool], scores: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    _check_pairs(labels, scores)
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError("labels and scores must be flat lists")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()) - {0.0, 1.0})}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers (found NaN or infinity)")
    return y.astype(int), s


def _check_pairs(first: Sequence[object], second: Sequence[object]) -> None:
    if len(first) != len(second):
        raise ValueError(f"got {len(first)} predictions/labels but {len(second)} answers/scores")
    if not first:
        raise ValueError("nothing to score: the lists are empty")
