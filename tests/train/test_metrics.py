"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phi3v_train.metrics import (
    accuracy_at,
    anls,
    auroc,
    edit_distance,
    exact_match_accuracy,
    mean_anls,
    normalize_answer,
)


def test_metrics_import_neither_torch_nor_sklearn():
    code = (
        "import sys, phi3v_train.metrics; "
        "print(','.join(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


# --- normalisation and exact match ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        (" Yes. ", "yes"),  # strip spaces -> "Yes." -> strip dots -> "Yes" -> "yes"
        ("..Archery..", "archery"),  # dots go from both ends
        ("A. B.", "a. b"),  # only outer dots: "A. B" -> lowercase
        ("cat .", "cat "),  # spaces first, then dots: the space before the dot survives
        ("", ""),
    ],
)
def test_normalize_answer_is_the_cookbooks(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_normalises_both_sides():
    predictions = ["Yes.", " no ", "Archery", "cat .", "BenchPress"]
    answers = ["yes", "No", "archery.", "cat", "Basketball"]
    # "yes"=="yes" ✓, "no"=="no" ✓, "archery"=="archery" ✓,
    # "cat " != "cat" ✗ (Cookbook quirk), "benchpress" != "basketball" ✗  ->  3/5 = 0.6
    assert exact_match_accuracy(predictions, answers) == pytest.approx(0.6)


def test_exact_match_refuses_mismatched_or_empty_lists():
    with pytest.raises(ValueError, match="2 predictions/labels but 1"):
        exact_match_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        exact_match_accuracy([], [])


# --- edit distance and ANLS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [
        ("kitten", "sitting", 3),  # k->s, e->i, insert g
        ("hello", "helo", 1),  # delete one l
        ("", "abc", 3),  # three inserts
        ("abc", "abc", 0),
        ("flaw", "lawn", 2),  # delete f, insert n
    ],
)
def test_edit_distance(first, second, distance):
    assert edit_distance(first, second) == distance
    assert edit_distance(second, first) == distance


def test_anls_one_edit():
    # distance("hello", "helo") = 1, longer length 5: NL = 1/5 = 0.2 < 0.5 -> 1 - 0.2 = 0.8
    assert anls("helo", ["hello"]) == pytest.approx(0.8)


def test_anls_is_case_insensitive_like_the_official_scorer():
    # lowercased and stripped, "  ITC Limited " and "itc limited" are equal: NL = 0 -> 1.0.
    # The Cookbook compares case-sensitively: I/i, T/t, C/c, L/l differ, 4 edits over 11
    # characters -> NL = 4/11 = 0.364 -> 0.636. Ours must not give that.
    assert anls("  ITC Limited ", ["itc limited"]) == 1.0


def test_anls_below_threshold_scores_zero():
    # "cat" vs "dog": 3 substitutions over 3 characters, NL = 1.0 >= 0.5 -> 0
    assert anls("cat", ["dog"]) == 0.0
    # "ab" vs "ac": NL = 1/2 = 0.5, not < 0.5 -> 0 (the threshold is strict)
    assert anls("ab", ["ac"]) == 0.0
    # "abcd" vs "abce": NL = 1/4 = 0.25 -> 0.75; with threshold 0.2 it is 0
    assert anls("abcd", ["abce"]) == pytest.approx(0.75)
    assert anls("abcd", ["abce"], threshold=0.2) == 0.0


def test_anls_takes_the_best_answer():
    # "$ 2.5 million" has 13 characters.
    #   vs "$2.5 million" (12): delete the space -> 1 edit, NL = 1/13 -> 12/13 = 0.923
    #   vs "2.5 million" (11): delete "$" and the space -> 2 edits, NL = 2/13 -> 11/13 = 0.846
    #   vs "two and a half million": far -> 0
    answers = ["2.5 million", "two and a half million", "$2.5 million"]
    assert anls("$ 2.5 million", answers) == pytest.approx(12 / 13)


def test_anls_empty_strings():
    assert anls("", ["abc"]) == 0.0  # NL = 3/3 = 1 -> 0
    assert anls("", [""]) == 1.0  # identical; no division by zero


def test_anls_refuses_bad_answers():
    with pytest.raises(TypeError, match="list of strings"):
        anls("a", "a")
    with pytest.raises(ValueError, match="at least one"):
        anls("a", [])
    with pytest.raises(ValueError, match="threshold"):
        anls("a", ["a"], threshold=0)


def test_mean_anls_over_questions():
    # 0.8 (helo/hello) + 0.0 (cat/dog) + 1.0 (Yes/yes) = 1.8, over 3 questions -> 0.6
    predictions = ["helo", "cat", "Yes"]
    answers = [["hello"], ["dog"], ["no", "yes"]]
    assert mean_anls(predictions, answers) == pytest.approx(0.6)


# --- AUROC and accuracy from scores --------------------------------------------------------


def test_auroc_with_ties_by_hand():
    labels = [0, 1, 0, 1, 0, 1]
    scores = [0.1, 0.4, 0.4, 0.8, 0.8, 0.9]
    # In each tie the positive comes first, so ranking ties by position (1..6) would give
    # positive ranks 2 + 4 + 6 = 12 and 6/9: only averaged ranks give the right answer.
    # Pairs (positive, negative), tie = 1/2:
    #   0.4 vs 0.1, 0.4, 0.8 -> 1 + 0.5 + 0 = 1.5
    #   0.8 vs 0.1, 0.4, 0.8 -> 1 + 1 + 0.5 = 2.5
    #   0.9 vs all three     -> 3
    # 7 of 3 * 3 = 9 pairs -> 7/9.
    # Same by ranks: 0.1 -> 1, 0.4 0.4 -> 2.5 each, 0.8 0.8 -> 4.5 each, 0.9 -> 6;
    # positive ranks 2.5 + 4.5 + 6 = 13, U = 13 - 3 * 4 / 2 = 7, AUC = 7/9.
    assert auroc(labels, scores) == pytest.approx(7 / 9)


def test_auroc_perfect_and_chance():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0  # every positive above
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0  # every positive below
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: 4 half-pairs / 4
    # positives 0.1 and 0.4, negatives 0.2 and 0.3: 0.1 beats neither, 0.4 beats both
    # -> 2 of 2 * 2 pairs = 0.5, without any tie
    assert auroc([1, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.5
    assert auroc([False, True], [0.3, 0.7]) == 1.0  # booleans are labels too


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes, but all 3 labels are 1"):
        auroc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="all 2 labels are 0"):
        auroc([0, 0], [0.2, 0.5])


def test_auroc_refuses_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="but 1"):
        auroc([0, 1], [0.1])


def test_accuracy_at_threshold():
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.5, 0.5, 0.2]
    # >= 0.5 is positive: predicted 1, 1, 1, 0 -> right, wrong, right, right = 3/4
    assert accuracy_at(labels, scores) == pytest.approx(0.75)
    # >= 0.6: predicted 1, 0, 0, 0 -> right, right, wrong, right = 3/4
    assert accuracy_at(labels, scores, threshold=0.6) == pytest.approx(0.75)
    # >= 0.1: all positive -> 2/4
    assert accuracy_at(labels, scores, threshold=0.1) == pytest.approx(0.5)
