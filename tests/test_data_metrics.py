"""T5 metric semantics, checked against values worked out by hand in each test."""
import math

import numpy as np
import pytest

from jaxprompt.data import metrics
from jaxprompt.errors import DataError


def test_accuracy_counts_equal_pairs():
  assert metrics.accuracy(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == {"accuracy": pytest.approx(100 * 3 / 4)}
  assert metrics.accuracy([0, 1, 2], [0, 1, -1]) == {"accuracy": pytest.approx(100 * 2 / 3)}
  assert metrics.sequence_accuracy(["x y", "z"], ["x y", "z "]) == {"sequence_accuracy": pytest.approx(50.0)}


def test_length_mismatch_and_empty_inputs_are_named():
  with pytest.raises(DataError, match=r"accuracy: 3 targets but 2 predictions"):
    metrics.accuracy([1, 2, 3], [1, 2])
  with pytest.raises(DataError, match=r"mean_3class_f1: no examples"):
    metrics.mean_multiclass_f1(3)([], [])


def test_binary_f1():
  # TP: idx 0, 4 -> 2; FP: idx 2 -> 1; FN: idx 1 -> 1.  P = R = 2/3, F1 = 2/3.
  got = metrics.f1_binary([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])["f1"]
  precision, recall = 2 / 3, 2 / 3
  assert got == pytest.approx(100 * 2 * precision * recall / (precision + recall))


def test_binary_f1_single_class_edge_cases():
  # No positive anywhere: F1 is 0/0, which sklearn (and so T5) reports as 0.
  assert metrics.f1_binary([0, 0, 0], [0, 0, 0]) == {"f1": 0.0}
  assert metrics.f1_binary([1, 1], [1, 1]) == {"f1": pytest.approx(100.0)}
  with pytest.raises(DataError, match=r"predictions must be 0 or 1, got \[2\]"):
    metrics.f1_binary([0, 1], [0, 2])


def test_f1_with_invalid_counts_invalid_predictions_as_wrong():
  targets = [1, 0, 1, 0]
  predictions = np.array([1, -1, -1, 0])
  # idx 1 (target 0) becomes 1 -> FP; idx 2 (target 1) becomes 0 -> FN.  TP = 1 -> F1 = 2*1 / (2*1 + 1 + 1).
  assert metrics.f1_score_with_invalid(targets, predictions) == {"f1": pytest.approx(100 * 2 / 4)}
  np.testing.assert_array_equal(predictions, [1, -1, -1, 0])  # the caller's array is not modified
  with pytest.raises(DataError, match=r"targets must be 0 or 1"):
    metrics.f1_score_with_invalid([0, 3], [0, 1])


def test_mean_multiclass_f1_from_a_hand_made_confusion_matrix():
  targets = [0, 0, 0, 1, 1, 2, 2, 2, 2]
  predictions = [0, 1, 0, 1, 2, 2, 2, 0, -1]
  # class 0: TP 2 (idx 0, 2), 3 true, 3 predicted (idx 0, 2, 7)  -> 2*2 / (3+3)
  # class 1: TP 1 (idx 3),    2 true, 2 predicted (idx 1, 3)     -> 2*1 / (2+2)
  # class 2: TP 2 (idx 5, 6), 4 true, 3 predicted (idx 4, 5, 6)  -> 2*2 / (4+3)   (-1 is only a miss)
  expected = (4 / 6 + 2 / 4 + 4 / 7) / 3
  assert metrics.mean_multiclass_f1(3)(targets, predictions) == {"mean_3class_f1": pytest.approx(100 * expected)}


def test_mean_multiclass_f1_absent_class_counts_as_zero():
  # Class 2 never occurs: its F1 is 0/0 -> 0, and it still enters the mean (sklearn with labels=range(3)).
  assert metrics.mean_multiclass_f1(3)([0, 1, 0, 1], [0, 1, 0, 1])["mean_3class_f1"] == pytest.approx(100 * 2 / 3)


def test_mean_multiclass_f1_sample_weight():
  # weights 2,1,1, all predicted 0. class 0: TP 2+1, true 2+1, predicted 2+1+1 -> 2*3 / (3+4);
  # class 1: TP 0 -> 0.
  fn = metrics.mean_multiclass_f1(2, sample_weight=[2.0, 1.0, 1.0])
  assert fn([0, 1, 0], [0, 0, 0]) == {"mean_2class_f1": pytest.approx(100 * (6 / 7 + 0) / 2)}


def test_matthews_binary():
  # TP 2, TN 2, FP 1, FN 1 -> (2*2 - 1*1) / sqrt(3*3*3*3)
  got = metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])["matthews_corrcoef"]
  assert got == pytest.approx(100 * 3 / 9)


def test_matthews_multiclass():
  # confusion [[1,1,0],[0,2,0],[1,0,1]]: n 6, correct 4, true sums (2,2,2), predicted sums (2,3,1)
  cov_tp = 4 * 6 - (2 * 2 + 2 * 3 + 2 * 1)
  cov_pp = 6 * 6 - (2 * 2 + 3 * 3 + 1 * 1)
  cov_tt = 6 * 6 - (2 * 2 + 2 * 2 + 2 * 2)
  got = metrics.matthews_corrcoef(["a", "a", "b", "b", "c", "c"], ["a", "b", "b", "b", "c", "a"])
  assert got["matthews_corrcoef"] == pytest.approx(100 * cov_tp / math.sqrt(cov_tt * cov_pp))


def test_matthews_undefined_is_zero():
  assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == {"matthews_corrcoef": 0.0}
  assert metrics.matthews_corrcoef([0, 1], [0, 1]) == {"matthews_corrcoef": pytest.approx(100.0)}


def test_pearson():
  t, p = [1, 2, 3, 4], [2, 4, 5, 9]
  # deviations t: -1.5 -.5 .5 1.5 ; p: -3 -1 0 4 ; cross 4.5+.5+0+6 = 11 ; squares 5 and 26
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(100 * 11 / math.sqrt(5 * 26))


def test_spearman_with_ties_uses_average_ranks():
  t, p = [1, 2, 2, 3], [10, 20, 30, 30]
  # ranks t: 1 2.5 2.5 4 ; ranks p: 1 2 3.5 3.5 ; deviations from 2.5: (-1.5 0 0 1.5), (-1.5 -.5 1 1)
  cross, var_t, var_p = 2.25 + 0 + 0 + 1.5, 4.5, 2.25 + 0.25 + 1 + 1
  assert metrics.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(100 * cross / math.sqrt(var_t * var_p))


def test_all_match_is_all_or_nothing():
  assert metrics.all_match([1, 0, 1], [1, 0, 1]) == {"exact_match": 100.0}
  assert metrics.exact_match([1, 0, 1], [1, 1, 1]) == {"exact_match": 0.0}


def test_normalize_squad():
  assert metrics.normalize_squad("  The  Cat's hat, an apple! ") == "cats hat apple"
  assert metrics.normalize_squad("Theory of Anthems") == "theory of anthems"  # only whole-word articles go


def test_squad_max_over_gold_answers():
  targets = [["eiffel tower", "Paris"], ["the Eiffel Tower", "tower"], ["x"]]
  predictions = ["The Eiffel Tower!", "a big tower", ""]
  # 1: normalised equal -> EM 1, F1 1.
  # 2: "big tower" vs "eiffel tower": 1 common of 2|2 -> F1 .5; vs "tower": P 1/2, R 1 -> F1 2/3. EM 0.
  # 3: empty prediction -> 0, 0.
  f1_2 = 2 * 0.5 * 1 / (0.5 + 1)
  got = metrics.squad(targets, predictions)
  assert got["em"] == pytest.approx(100 * (1 + 0 + 0) / 3)
  assert got["f1"] == pytest.approx(100 * (1 + f1_2 + 0) / 3)


def test_squad_rejects_plain_string_targets():
  with pytest.raises(DataError, match=r"list of answers, got the string 'Paris'"):
    metrics.squad(["Paris"], ["Paris"])


def test_record_deduplicates_queries():
  targets = [{"group": "q1", "value": ["Paris"]}, {"group": "q1", "value": ["Paris"]},
             {"group": "q2", "value": ["Rome", "Roma"]}]
  predictions = [{"value": "paris."}, {"value": "London"}, {"value": "Milan"}]
  # q1 counted once (first copy, correct), q2 wrong: EM = 1/2 (not 1/3).
  assert metrics.record(targets, predictions)["em"] == pytest.approx(50.0)
  assert metrics.deduplicate_metric(metrics.accuracy)([{"group": 1, "value": 1}, {"group": 1, "value": 0}],
                                                      [{"value": 1}, {"value": 1}]) == {"accuracy": 100.0}


def test_mean_group_metric_all_match_multirc_em():
  groups = [("g1", 1, 1), ("g1", 0, 0), ("g2", 1, 1), ("g2", 1, 0), ("g2", 0, 0), ("g3", 0, 0)]
  targets = [{"group": g, "value": t} for g, t, _ in groups]
  predictions = [{"group": g, "value": p} for g, _, p in groups]
  # g1 all right (100), g2 one wrong (0), g3 right (100)
  assert metrics.mean_group_metric(metrics.all_match)(targets, predictions) == {"exact_match": pytest.approx(200 / 3)}
  with_groups = metrics.mean_group_metric(metrics.all_match, return_subgroup_scores=True)(targets, predictions)
  assert with_groups["g2-exact_match"] == 0.0 and with_groups["g3-exact_match"] == 100.0


def test_multirc_f1_over_all_answers():
  targets = [{"value": v} for v in (1, 0, 1, 1)]
  predictions = [{"value": v} for v in (1, 1, 0, -1)]
  # TP idx0; FP idx1; FN idx2 and idx3 (invalid -1 flipped to 0) -> 2*1 / (2*1 + 1 + 2)
  assert metrics.multirc_f1_over_all_answers(targets, predictions) == {"f1": pytest.approx(100 * 2 / 5)}


def _binary_rank_inputs():
  # (correct candidate, [score of candidate 0, candidate 1]) for 4 examples.
  examples = [(1, [-2.0, -1.0]), (0, [-1.0, -3.0]), (0, [-3.0, -2.5]), (1, [-1.0, -1.5])]
  targets, scores = [], []
  for i, (correct, candidate_scores) in enumerate(examples):
    for j, score in enumerate(candidate_scores):
      targets.append(((i, j), j == correct, 1.0, 2))
      scores.append(score)
  order = [5, 0, 7, 2, 1, 6, 3, 4]  # any order: the metric sorts on idx
  return [targets[k] for k in order], [scores[k] for k in order]


def test_rank_classification_binary():
  targets, scores = _binary_rank_inputs()
  got = metrics.rank_classification(targets, scores, num_classes=2)
  # predictions 1, 0, 1, 0 vs labels 1, 0, 0, 1: 2 right; TP 1, FP 1, FN 1.
  assert got["accuracy"] == pytest.approx(50.0)
  assert got["f1"] == pytest.approx(50.0)
  # P(candidate 1) = sigmoid(s1 - s0): positives 0.731 (ex0), 0.378 (ex3); negatives 0.119, 0.622.
  # ROC: 3 of the 4 (positive, negative) pairs are ordered right.
  assert got["auc-roc"] == pytest.approx(75.0)
  # ranked: 0.731 P, 0.622 N, 0.378 P, 0.119 N -> AP = .5 * 1/1 + .5 * 2/3
  assert got["auc-pr"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))


def test_rank_classification_multiclass_and_multiple_answers():
  # 3 examples x 3 candidates; correct 0, 2, 1; best-scoring 0, 2, 2.
  correct, best = [0, 2, 1], [0, 2, 2]
  targets = [((i, j), j == correct[i], 1.0, 1) for i in range(3) for j in range(3)]
  scores = [1.0 if j == best[i] else 0.0 for i in range(3) for j in range(3)]
  got = metrics.rank_classification(targets, scores, num_classes=3)
  # class 0: 2*1/(1+1); class 1: 0; class 2: 2*1/(1+2)
  assert got == {"accuracy": pytest.approx(200 / 3), "mean_3class_f1": pytest.approx(100 * (1 + 0 + 2 / 3) / 3)}
  # Example 2 also accepts candidate 2: now every prediction is right, and only accuracy is reported.
  targets[2 * 3 + 2] = ((2, 2), True, 1.0, 1)
  assert metrics.rank_classification(targets, scores, num_classes=3) == {"accuracy": pytest.approx(100.0)}


def test_rank_classification_variable_candidates_and_length_normalisation():
  # example 0: 2 candidates (weight 1), example 1: 3 candidates (weight 3).
  targets = [((0, 0), True, 1.0, 1), ((0, 1), False, 1.0, 4), ((1, 0), False, 3.0, 1), ((1, 1), False, 3.0, 1),
             ((1, 2), True, 3.0, 2)]
  scores = [-2.0, -4.0, -5.0, -3.0, -2.0]
  # raw: ex0 picks 0 (right), ex1 picks 2 (right) -> 100
  assert metrics.rank_classification(targets, scores) == {"accuracy": pytest.approx(100.0)}
  # per token: ex0 -2/1 vs -4/4=-1 -> picks 1 (wrong); ex1 -5, -3, -1 -> 2 (right): (0*1 + 1*3) / (1+3)
  got = metrics.rank_classification(targets, scores, normalize_by_target_length=True)
  assert got == {"accuracy": pytest.approx(75.0)}


def test_rank_classification_bad_inputs():
  with pytest.raises(DataError, match=r"not a multiple of num_classes=2"):
    metrics.rank_classification([((0, 0), True, 1.0, 1)] * 3, [0.0] * 3, num_classes=2)
  with pytest.raises(DataError, match=r"idx must have 2 entries"):
    metrics.rank_classification([((0,), True, 1.0, 1)], [0.0], num_classes=1)
  with pytest.raises(DataError, match=r"2 targets but 1 scores"):
    metrics.rank_classification([((0, 0), True, 1.0, 1)] * 2, [0.0])
