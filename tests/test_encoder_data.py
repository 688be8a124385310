"""The encoder-only family's rows (`data/encoder.py`, `data/encoder_converter.py`) against transformers' own fast
tokenizers on tiny BERT and RoBERTa tokenizers built in the test: ids, token types, mask, the 'longest_first' cut."""
import logging

import numpy as np
import pytest
import transformers

from jaxprompt.data import converters, encoder, pipeline
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import CLASS_LABEL, REGRESSION_LABEL, TOKEN_TYPES
from tests.hf_tokenizers import bert_folder, roberta_folder

PAIRS = [('The quick brown fox jumps over', 'the lazy dog.'), ('Prompt tuning!', 'a frozen model, a tiny prompt'),
         ('naïve café 🙂', 'zyx')]


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def tokenizers(request, tmp_path_factory):
  folder = (bert_folder if request.param == 'bert' else roberta_folder)(tmp_path_factory.mktemp(request.param))
  vocabulary = HfVocabulary(str(folder))
  return vocabulary, transformers.AutoTokenizer.from_pretrained(str(folder)), encoder.EncoderTokens.of(vocabulary)


@pytest.mark.parametrize('length', [7, 9, 10, 24])
def test_pairs_and_single_texts_equal_transformers(tokenizers, length):
  vocabulary, hf, tokens = tokenizers
  rows = [(vocabulary.encode(a), vocabulary.encode(b)) for a, b in PAIRS] + [vocabulary.encode(PAIRS[0][0])]
  got = converters.get('encoder_only').to_features(rows, [1, 0, 2, 1], {'inputs': length}, tokens)
  for i, (a, b) in enumerate(PAIRS + [(PAIRS[0][0], None)]):
    want = hf(a, b, truncation=True, max_length=length, padding='max_length', return_token_type_ids=True)
    assert got['encoder_input_tokens'][i].tolist() == want['input_ids'], (i, length)
    assert got[TOKEN_TYPES][i].tolist() == want['token_type_ids']
    assert got['encoder_input_mask'][i].tolist() == want['attention_mask']
  assert got[CLASS_LABEL].tolist() == [1, 0, 2, 1] and got[CLASS_LABEL].dtype == np.int32


def test_tf_converter_equals_numpy_rows(tokenizers):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocabulary, _, tokens = tokenizers
  a, b = (vocabulary.encode(t) for t in PAIRS[0])
  ds = tf.data.Dataset.from_tensor_slices({'inputs': tf.ragged.constant([a, b]).to_tensor(), 'label': [0.5, 4.0]})
  ds = ds.map(lambda x: {**x, 'inputs': x['inputs'][:tf.reduce_sum(tf.cast(x['inputs'] > 0, tf.int32))]})
  pairs = tf.data.Dataset.from_tensors({'inputs': a, 'inputs_pair': b, 'label': 1})
  family = converters.get('encoder_only')
  for data, rows, labels in ((ds, [a, b], [0.5, 4.0]), (pairs, [(a, b)], [1])):
    for length in (6, 9, 32):
      got = list(family.convert(data, {'inputs': length}, False, 0, tokens, None).as_numpy_iterator())
      want = family.to_features(rows, labels, {'inputs': length}, tokens)
      for key, value in want.items():
        np.testing.assert_array_equal(np.stack([g[key] for g in got]), value, err_msg=f'{key} {length}')


def test_regression_labels_are_float_and_choice_rows_are_3d(tokenizers):
  vocabulary, hf, tokens = tokenizers
  got = encoder.to_encoder_features([vocabulary.encode('great fun')], [3.8], {'inputs': 8}, tokens)
  assert got[REGRESSION_LABEL].dtype == np.float32 and got[REGRESSION_LABEL].tolist() == [pytest.approx(3.8)]
  assert CLASS_LABEL not in got
  filled = got['encoder_input_mask'].mean()  # the padding (RoBERTa's id 1, BERT's 0) is not a token
  assert 0 < filled < 1 and pipeline.batch_stats(got) == {'examples': 1.0, 'encoder_fill': pytest.approx(filled)}
  premise, choices = 'The dog jumps.', ['because the fox is quick', 'so the fox is lazy']
  rows = [[(vocabulary.encode(premise), vocabulary.encode(c)) for c in choices]] * 3
  got = encoder.choice_features(rows, [1, 0, 1], {'inputs': 16}, tokens)
  assert got['encoder_input_tokens'].shape == (3, 2, 16) and got[TOKEN_TYPES].shape == (3, 2, 16)
  for i, choice in enumerate(choices):
    assert got['encoder_input_tokens'][2, i].tolist() == hf(premise, choice, max_length=16, truncation=True,
                                                            padding='max_length')['input_ids']
  assert got[CLASS_LABEL].tolist() == [1, 0, 1]
  filled = got['encoder_input_mask'].mean()
  assert pipeline.batch_stats(got) == {'examples': 3.0, 'encoder_fill': pytest.approx(filled)}  # [b, choices, l]
  with pytest.raises(DataError, match=r'same number of choices, got \[1, 2\]'):
    encoder.choice_features([rows[0], rows[0][:1]], None, {'inputs': 16}, tokens)


def test_truncation_is_counted_and_said_once(tokenizers, caplog):
  vocabulary, _, tokens = tokenizers
  rows = [(vocabulary.encode(a), vocabulary.encode(b)) for a, b in PAIRS]
  with caplog.at_level(logging.WARNING, logger='jaxprompt'):
    encoder.to_encoder_features(rows, None, {'inputs': 9}, tokens, where='task x split y')
  lines = [r.getMessage() for r in caplog.records if 'truncated' in r.getMessage()]
  cut = sum(len(vocabulary.encode_with_types(a, b)[0]) > 9 for a, b in PAIRS)
  assert cut and len(lines) == 1 and lines[0].startswith(f'task x split y: {cut} of 3 examples were truncated'), lines
  assert 'special tokens included' in lines[0] and 'EOS' not in lines[0]  # BERT rows have no EOS
  caplog.clear()
  encoder.to_encoder_features(rows, None, {'inputs': 64}, tokens)
  assert not [r for r in caplog.records if 'truncated' in r.getMessage()]


def test_packing_and_tiny_lengths_are_refused_in_one_line(tokenizers):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocabulary, _, tokens = tokenizers
  ds = tf.data.Dataset.from_tensors({'inputs': vocabulary.encode('fun')})
  with pytest.raises(ConfigError, match=r'does not pack rows .*: set PACK=False$'):
    converters.get('encoder_only').convert(ds, {'inputs': 8}, True, 0, tokens, None)
  with pytest.raises(ConfigError,
                     match=r'inputs=3 leaves no room for text beside the tokenizer\'s [34] special tokens'):
    encoder.to_encoder_features([(vocabulary.encode('a'), vocabulary.encode('b'))], None, {'inputs': 3}, tokens)


def test_a_vocabulary_without_pairs_is_a_config_error():
  from jaxprompt.data.vocab import get_default_vocabulary  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"Hugging Face tokenizer, not .*: set VOCABULARY"):
    encoder.EncoderTokens.of(get_default_vocabulary())


def test_longest_first_keeps_what_the_tokenizers_library_keeps(tmp_path):
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = Tokenizer.from_file(str(bert_folder(tmp_path) / 'tokenizer.json'))
  fox, dog = (tokenizer.token_to_id(w) for w in ('fox', 'dog'))
  for a, b, length in [(6, 4, 8), (4, 6, 8), (5, 5, 10), (9, 1, 7), (1, 9, 7), (3, 3, 20), (7, 2, 9), (2, 2, 4)]:
    tokenizer.enable_truncation(length)
    ids = tokenizer.encode(' '.join(['fox'] * a), ' '.join(['dog'] * b)).ids
    assert encoder.longest_first((a, b), length - 3) == (ids.count(fox), ids.count(dog)), (a, b, length)
  assert encoder.longest_first((7,), 3) == (3,) and encoder.longest_first((2,), 3) == (2,)


def test_mixable_examples_make_each_kinds_row(tokenizers):
  # The label tasks' one structure: `is_pair` tells a single text (its empty `inputs_pair` unused) from a pair, an
  # empty second text included ([CLS] a [SEP] [SEP], as transformers' batched pairs: run_glue.py's); both labels
  # ride along.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocabulary, hf, tokens = tokenizers
  a, b = (vocabulary.encode(t) for t in PAIRS[1])
  examples = [(a, [], 0, 1, 0.0), (a, b, 1, 0, 0.0), (a, [], 1, -1, 2.5)]
  keys = ('inputs', 'inputs_pair', 'is_pair', 'label', 'label_value')
  rows = [
      dict(zip(keys, (np.asarray(x, np.int32), np.asarray(y, np.int32), p, c, np.float32(v))))
      for x, y, p, c, v in examples
  ]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(rows), output_signature={
          k: tf.TensorSpec([None] if k.startswith('inputs') else [], tf.float32 if k == 'label_value' else tf.int32)
          for k in keys
      })
  got = list(converters.get('encoder_only').convert(ds, {'inputs': 12}, False, 0, tokens, None).as_numpy_iterator())
  want = encoder.example_features(rows, {'inputs': 12}, tokens)
  texts = [([PAIRS[1][0]],), ([PAIRS[1][0]], [PAIRS[1][1]]), ([PAIRS[1][0]], [''])]
  assert want['encoder_input_tokens'].tolist() == [
      hf(*t, truncation=True, max_length=12, padding='max_length')['input_ids'][0] for t in texts
  ]
  assert want[CLASS_LABEL].tolist() == [1, 0, -1] and want[REGRESSION_LABEL].tolist() == [0.0, 0.0, 2.5]
  for key, value in want.items():
    np.testing.assert_array_equal(np.stack([g[key] for g in got]), value, err_msg=key)
