"""Tagging tasks from CoNLL directories (`data/tagging_tasks.py`): rows on a tiny BERT tokenizer, the tag per word
back from per-token predictions, and the entity metric."""
import numpy as np
import pytest

from jaxprompt.data import tagging_tasks
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import IGNORE_LABEL
from tests.hf_tokenizers import bert_folder

TRAIN = 'Peter\tB-PER\nBlackburn\tI-PER\nvisits\tO\nParis\tB-LOC\n\nThe\tO\nfox\tO\n'
DEV = 'Prompt\tB-PER\ntuning\tO\nin\tO\nParis\tB-LOC\n'


@pytest.fixture(scope='module')
def vocabulary(tmp_path_factory):
  return HfVocabulary(str(bert_folder(tmp_path_factory.mktemp('bert'))))


def _task(tmp_path):
  (tmp_path / 'train.txt').write_text(TRAIN)
  (tmp_path / 'dev.conll').write_text(DEV)
  return tagging_tasks.register_tagging_task('tiny_ner', str(tmp_path))


def test_task_rows_from_a_directory(tmp_path, vocabulary):
  task = _task(tmp_path)
  assert task.splits == ('train', 'validation') and task.labels == ('O', 'B-LOC', 'B-PER', 'I-PER')
  aligned, features, sentences = task.features('validation', vocabulary, 16)
  assert [s.words for s in sentences] == [('Prompt', 'tuning', 'in', 'Paris')]
  labels = features['token_labels'][0]
  first = [i for i, w in enumerate(aligned[0].word_ids) if w >= 0 and (i == 0 or aligned[0].word_ids[i - 1] != w)]
  assert labels[first].tolist() == [2, 0, 0, 1] and (np.delete(labels, first) == IGNORE_LABEL).all()
  assert features['encoder_input_tokens'].shape == (1, 16) and features['encoder_input_mask'][0].sum() == len(
      aligned[0].tokens)


def test_word_tags_from_first_sub_tokens_and_the_span_metric(tmp_path, vocabulary):
  task = _task(tmp_path)
  aligned, features, sentences = task.features('validation', vocabulary, 16)
  predicted = np.where(features['token_labels'] >= 0, features['token_labels'], 3)  # other sub-tokens say I-PER
  tags = task.word_tags(aligned, predicted, vocabulary, 16)
  assert tags == [list(sentences[0].tags)]
  assert task.score(sentences, tags) == {
      'span_precision': 100.0, 'span_recall': 100.0, 'span_f1': 100.0, 'span_precision/LOC': 100.0,
      'span_recall/LOC': 100.0, 'span_f1/LOC': 100.0, 'span_precision/PER': 100.0, 'span_recall/PER': 100.0,
      'span_f1/PER': 100.0, 'accuracy': 100.0
  }
  wrong = [['B-PER', 'O', 'O', 'O']]  # Paris missed: 1 of 2 entities, 1 of 1 predicted right
  scores = tagging_tasks.tagging_metrics([sentences[0].tags], wrong)
  assert (scores['span_precision'], scores['span_recall'], scores['accuracy']) == (100.0, 50.0, 75.0)
  assert scores['span_f1'] == pytest.approx(200 / 3)


def test_bad_task_arguments_get_one_line(tmp_path):
  (tmp_path / 'dev.txt').write_text(DEV)
  with pytest.raises(ConfigError, match=r'without a training file, give its tag set'):
    tagging_tasks.register_tagging_task('x', str(tmp_path))
  with pytest.raises(DataError, match=r"dev.txt:1: tag 'B-PER' is not in the label list"):
    tagging_tasks.register_tagging_task('x', str(tmp_path), labels=('O', 'B-LOC'))
  with pytest.raises(DataError, match=r'is not a directory'):
    tagging_tasks.register_tagging_task('x', str(tmp_path / 'dev.txt'))


def test_seqio_task_streams_the_rows_the_aligner_makes(tmp_path, vocabulary):
  from jaxprompt.data import converters, encoder, pipeline  # pylint: disable=g-import-not-at-top
  task = _task(tmp_path)
  for length in (6, 16):
    _, want, _ = task.features('train', vocabulary, length)
    provider = pipeline.get_provider('tiny_ner', vocabulary, converters.ENCODER_ONLY)
    ds = provider.get_dataset(sequence_length=None, split='train', shuffle=False, num_epochs=1)
    rows = list(
        converters.get(converters.ENCODER_ONLY).convert(ds, {'inputs': length}, False, 0,
                                                        encoder.EncoderTokens.of(vocabulary), None).as_numpy_iterator())
    for key, value in want.items():
      np.testing.assert_array_equal(np.stack([r[key] for r in rows]), value, err_msg=f'{key} {length}')


def test_training_stream_counts_the_rows_it_cuts(tmp_path, vocabulary):
  from jaxprompt.data import converters, pipeline  # pylint: disable=g-import-not-at-top
  _task(tmp_path)
  provider = pipeline.get_provider('tiny_ner', vocabulary, converters.ENCODER_ONLY)
  lengths = {'inputs': 6}
  count = pipeline.training_count(provider, lengths, 'train')
  ds = pipeline.train_dataset(provider, lengths, 'train', 2, seed=0, count=count, family=converters.ENCODER_ONLY)
  batch = next(pipeline.train_batches(ds, family=converters.ENCODER_ONLY))
  assert sorted(batch) == ['encoder_input_mask', 'encoder_input_tokens', 'encoder_token_types', 'token_labels']
  assert batch['token_labels'].shape == (2, 6)
  found = count.truncation()
  long = len(vocabulary.encode(' Peter Blackburn visits Paris')) + 2 > 6
  assert long and found.examples >= 2 and found.truncated >= 1 and found.lengths == lengths
  assert 'special tokens included' in found.message()  # [CLS] / [SEP], not an EOS
  with pytest.raises(ConfigError, match='set PACK=False'):
    pipeline.train_dataset(provider, lengths, 'train', 2, seed=0, pack=True, family=converters.ENCODER_ONLY)
