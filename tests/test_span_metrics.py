"""Entity-level span precision / recall / F1 (`data/span_metrics.py`) against seqeval 1.2.2 (default mode, the
conlleval.pl reading) on hand cases covering its documented edge cases and on random tag sequences."""
import random
import warnings

import pytest

from jaxprompt.data.span_metrics import entities, span_f1
from jaxprompt.errors import DataError

TAGS = ['O', 'B-PER', 'I-PER', 'E-PER', 'S-PER', 'B-LOC', 'I-LOC', 'E-LOC', 'S-LOC', 'I-MISC']


@pytest.mark.parametrize(
    'tags,want',
    [
        (['B-PER', 'I-PER', 'O', 'B-LOC'], {('PER', 0, 2), ('LOC', 3, 4)}),  # IOB2; an entity at the sentence end
        (['I-PER', 'I-PER', 'B-PER', 'O'], {('PER', 0, 2), ('PER', 2, 3)}),  # IOB1: I- opens, B- splits a run
        (['O', 'I-LOC', 'I-LOC'], {('LOC', 1, 3)}),  # I- after O opens an entity that runs to the end
        (['B-PER', 'I-LOC', 'I-LOC'], {('PER', 0, 1), ('LOC', 1, 3)}),  # a type change closes and opens
        (['B-PER', 'B-PER'], {('PER', 0, 1), ('PER', 1, 2)}),
        (['B-LOC', 'E-LOC', 'S-PER', 'E-PER', 'I-PER'], {('LOC', 0, 2), ('PER', 2, 3), ('PER', 3, 4), ('PER', 4, 5)}),
        (['O', 'O'], set()),
        ([], set()),
    ])
def test_entities_hand_cases(tags, want):
  assert entities(tags) == want


def test_scores_by_hand():
  targets = [['B-PER', 'I-PER', 'O', 'B-LOC'], ['O', 'I-MISC', 'I-MISC']]
  predictions = [['B-PER', 'I-PER', 'O', 'O'], ['O', 'B-MISC', 'I-MISC']]  # IOB1 vs IOB2 of one entity: equal
  got = span_f1(targets, predictions)
  assert got['span_precision'] == 100.0 and got['span_recall'] == pytest.approx(200 / 3)
  assert got['span_f1'] == pytest.approx(80.0)
  assert (got['span_f1/PER'], got['span_f1/MISC'], got['span_recall/LOC'], got['span_precision/LOC']) == (100, 100, 0,
                                                                                                          0)
  # A wrong boundary is a miss and a false alarm: no partial credit.
  assert span_f1([['B-PER', 'I-PER']], [['B-PER', 'O']])['span_f1'] == 0.0
  assert span_f1([['O']], [['O']]) == {'span_precision': 0.0, 'span_recall': 0.0, 'span_f1': 0.0}


def test_bad_inputs_are_one_error():
  with pytest.raises(DataError, match='sentence 1 has 2 target tags but 1 predicted tags'):
    span_f1([['O'], ['O', 'O']], [['O'], ['O']])
  with pytest.raises(DataError, match='1 targets but 2 predictions'):
    span_f1([['O']], [['O'], ['O']])
  with pytest.raises(DataError, match="tag 'PER' is neither O nor"):
    span_f1([['PER']], [['O']])


def test_matches_seqeval_on_random_tags():
  seqeval = pytest.importorskip('seqeval.metrics')
  rng = random.Random(0)
  for _ in range(200):
    sentences = [rng.randint(0, 8) for _ in range(rng.randint(1, 6))]
    targets = [[rng.choice(TAGS) for _ in range(n)] for n in sentences]
    predictions = [[t if rng.random() < 0.6 else rng.choice(TAGS) for t in s] for s in targets]
    got = span_f1(targets, predictions)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # seqeval warns on 0/0 and scores it 0
      report = seqeval.classification_report(targets, predictions, output_dict=True)
      micro = [
          seqeval.precision_score(targets, predictions),
          seqeval.recall_score(targets, predictions),
          seqeval.f1_score(targets, predictions)
      ]
    assert [got['span_precision'], got['span_recall'], got['span_f1']] == pytest.approx([100 * v for v in micro])
    types = {k for k in report if not k.endswith(' avg')}
    assert types == {k.split('/')[1] for k in got if '/' in k}
    for kind in types:
      want = report[kind]
      assert [got[f'span_precision/{kind}'], got[f'span_recall/{kind}'], got[f'span_f1/{kind}']
             ] == pytest.approx([100 * want['precision'], 100 * want['recall'], 100 * want['f1-score']])
