"""Decoder-only features: the seqio converter and its numpy twin, loss weights on the targets, packing with prompt
slots, task ids, buckets, left-padded prompts, and the pipeline on a file task with a Hugging Face tokenizer."""
import json

import numpy as np
import pytest
import tensorflow as tf

from jaxprompt.data import buckets, causal, converters, custom
from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError
from jaxprompt.models.features import CAUSAL_FEATURES, CAUSAL_PACKING_FEATURES, PROMPT_SLOT_ID, TASK_FEATURE
from tests import hf_tokenizers

LENGTHS = {'inputs': 8, 'targets': 5}
EOS, BOS = 3, 9
FAMILY = converters.DECODER_ONLY


def _examples(count=12, seed=0, inputs_eos=False):
  """Random rows with id 0 inside (a real token) and targets ending in EOS, cut to the lengths."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    inputs = list(rng.integers(0, 20, rng.integers(0, LENGTHS['inputs'] - inputs_eos + 1)))
    inputs = [i if i != EOS else 0 for i in inputs] + ([EOS] if inputs_eos else [])
    targets = [t if t != EOS else 0 for t in rng.integers(0, 20, rng.integers(0, LENGTHS['targets']))] + [EOS]
    out.append((np.asarray(inputs, np.int32), np.asarray(targets, np.int32)))
  return out


def _dataset(examples, task_ids=None):
  signature = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)}
  if task_ids is not None:
    signature[TASK_FEATURE] = tf.TensorSpec([1], tf.int32)
  rows = [{'inputs': i, 'targets': t} for i, t in examples]
  if task_ids is not None:
    rows = [dict(r, **{TASK_FEATURE: np.asarray([k], np.int32)}) for r, k in zip(rows, task_ids)]
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=signature)


def _stack(ds, family=FAMILY):
  rows = list(ds.as_numpy_iterator())
  return data.as_float_weights({k: np.stack([r[k] for r in rows]) for k in rows[0]}, family)


@pytest.mark.parametrize(
    'tokens', [causal.StreamTokens(bos=BOS),
               causal.StreamTokens(),
               causal.StreamTokens(bos=BOS, inputs_eos=EOS)], ids=['bos', 'no_bos', 'drop_inputs_eos'])
def test_converter_and_numpy_twin_give_the_same_arrays(tokens):
  examples = _examples(inputs_eos=tokens.inputs_eos is not None)
  ours = _stack(data.convert_features(_dataset(examples), LENGTHS, family=FAMILY, tokens=tokens))
  twin = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS, FAMILY, tokens)
  assert sorted(ours) == sorted(twin) == sorted(CAUSAL_FEATURES)
  for k in CAUSAL_FEATURES:
    np.testing.assert_array_equal(ours[k], twin[k], err_msg=k)
    assert ours[k].dtype == twin[k].dtype == (np.float32 if k == 'decoder_loss_weights' else np.int32)
  assert ours['decoder_input_tokens'].shape == (len(examples), causal.row_length(LENGTHS))


def test_loss_weights_sit_exactly_on_the_targets_and_the_stream_is_bos_inputs_targets():
  examples = _examples(seed=1, inputs_eos=True)
  tokens = causal.StreamTokens(bos=BOS, inputs_eos=EOS)
  f = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS, FAMILY, tokens)
  for row, (inputs, targets) in enumerate(examples):
    mask = f['decoder_input_mask'][row].astype(bool)
    stream = np.concatenate([[BOS], inputs[:-1], targets])  # the inputs' EOS dropped: one text
    np.testing.assert_array_equal(f['decoder_input_tokens'][row][mask], stream[:-1])
    np.testing.assert_array_equal(f['decoder_target_tokens'][row][mask], stream[1:])
    weighted = f['decoder_loss_weights'][row] == 1
    np.testing.assert_array_equal(f['decoder_target_tokens'][row][weighted], targets)  # EOS included, nothing else
    assert not weighted[~mask].any() and mask[:mask.sum()].all()  # right-padded
    assert (f['decoder_input_tokens'][row][mask] == 0).sum() == (stream[:-1] == 0).sum()  # id 0 stays a token


def test_packed_rows_hold_each_example_behind_its_prompt_slots():
  examples, slots = _examples(seed=2), 3
  tokens = causal.StreamTokens(bos=BOS)
  packed = _stack(data.convert_features(_dataset(examples), LENGTHS, True, slots, FAMILY, tokens))
  assert set(packed) == set(CAUSAL_FEATURES + CAUSAL_PACKING_FEATURES)
  assert packed['decoder_input_tokens'].shape[1] == causal.row_length(LENGTHS, slots)
  unpacked = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS, FAMILY, tokens)
  segments = data.batch_stats(packed)['examples']
  assert segments == len(examples) > len(packed['decoder_input_tokens'])  # several examples per row
  found = 0
  for row in range(len(packed['decoder_input_tokens'])):
    ids = packed['decoder_segment_ids'][row]
    for segment in range(1, ids.max() + 1):
      at = ids == segment
      np.testing.assert_array_equal(packed['decoder_positions'][row][at], np.arange(at.sum()))
      tokens_in = packed['decoder_input_tokens'][row][at]
      assert (tokens_in[:slots] == PROMPT_SLOT_ID).all() and tokens_in[slots] == BOS
      assert not packed['decoder_loss_weights'][row][at][:slots].any()  # BOS predicts a target only after no inputs
      real = unpacked['decoder_input_mask'][found].astype(bool)
      for k in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'):
        np.testing.assert_array_equal(packed[k][row][at][slots:], unpacked[k][found][real], err_msg=k)
      found += 1
    np.testing.assert_array_equal(packed['decoder_input_mask'][row], ids > 0)
  assert found == len(examples)


def test_task_ids_pass_through_causal_rows():
  examples = _examples(count=5, seed=3)
  ds = data.convert_with_task_ids(_dataset(examples, task_ids=[4, 0, 2, 2, 1]), LENGTHS, FAMILY,
                                  causal.StreamTokens(bos=BOS))
  batch = _stack(ds)
  np.testing.assert_array_equal(batch[TASK_FEATURE], [4, 0, 2, 2, 1])
  assert set(batch) == set(CAUSAL_FEATURES) | {TASK_FEATURE}


def test_buckets_cut_a_causal_batch_at_its_mask_not_its_ids():
  # The last real column holds id 0 as input and as target: only the mask tells it is real.
  f = causal.to_causal_features([np.asarray([5, 0, 0], np.int32)], [np.asarray([0, 0], np.int32)], LENGTHS)
  assert f['decoder_input_mask'][0].sum() == 4 and f['decoder_target_tokens'][0][3] == 0
  cut = buckets.LengthBuckets(inputs=None, targets=2).trim(f)
  assert all(v.shape == (1, 4) for v in cut.values())
  np.testing.assert_array_equal(cut['decoder_input_mask'], [[1, 1, 1, 1]])


def test_left_padded_prompts_for_decoding():
  tokens = causal.StreamTokens(bos=BOS, inputs_eos=EOS)
  p = causal.to_causal_prompts([np.asarray([5, 0, EOS]), np.asarray([EOS]), np.arange(1, 12)], LENGTHS, tokens)
  assert p['decoder_input_tokens'].shape == (3, LENGTHS['inputs'] + 1)
  np.testing.assert_array_equal(p['decoder_input_tokens'][0], [0] * 6 + [BOS, 5, 0])
  np.testing.assert_array_equal(p['decoder_input_mask'][0], [0] * 6 + [1, 1, 1])
  np.testing.assert_array_equal(p['decoder_positions'][0], [0] * 6 + [0, 1, 2])
  np.testing.assert_array_equal(p['decoder_input_tokens'][1], [0] * 8 + [BOS])
  np.testing.assert_array_equal(p['decoder_input_tokens'][2], np.arange(3, 12))  # too long: the last columns kept


def test_unknown_family_names_the_known_ones():
  with pytest.raises(ConfigError,
                     match=r"unknown model family 'prefix_lm'.*\['decoder_only', 'encoder_decoder', 'encoder_only'\]"):
    data.to_features([np.asarray([1])], None, LENGTHS, 'prefix_lm')


@pytest.fixture(scope='module')
def gpt2_task(tmp_path_factory):
  root = tmp_path_factory.mktemp('causal_task')
  folder = hf_tokenizers.gpt2_folder(root / 'gpt2')
  rows = [{'inputs': f'review {i}: fun!', 'targets': 'positive' if i % 2 else 'negative'} for i in range(12)]
  (root / 'train.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
  task = custom.register_file_task('jp_test_causal_gpt2', train=str(root / 'train.jsonl'),
                                   validation=str(root / 'train.jsonl'), vocabulary=str(folder), overwrite=True)
  yield task
  custom.unregister_file_task(task.name)


def test_pipeline_reads_a_task_as_causal_batches(gpt2_task):
  lengths = {'inputs': 16, 'targets': 8}
  vocabulary = data.targets_vocabulary(gpt2_task)
  tokens = data.stream_tokens(gpt2_task)
  assert tokens == causal.StreamTokens(None, vocabulary.eos_id)  # GPT-2 adds no BOS; the task's inputs EOS drops
  examples, _ = data.read_examples(gpt2_task, lengths, 'validation')
  twin = data.to_features([e['inputs'] for e in examples], [e['targets'] for e in examples], lengths, FAMILY, tokens)
  ds = data.convert_features(gpt2_task.get_dataset(lengths, 'validation', shuffle=False), lengths, family=FAMILY,
                             tokens=tokens)
  for k, v in _stack(ds).items():
    np.testing.assert_array_equal(v, twin[k], err_msg=k)
  first = twin['decoder_input_tokens'][0][twin['decoder_input_mask'][0] == 1]
  assert vocabulary.decode(first) == 'review 0: fun!negative'  # one text: inputs then targets, no EOS between


@pytest.mark.slow
def test_training_streams_are_causal_packed_unpacked_and_multi_task(gpt2_task):
  lengths = {'inputs': 16, 'targets': 8}
  for pack in (False, True):
    batch = next(
        data.train_batches(
            data.train_dataset(gpt2_task, lengths, 'train', 4, seed=0, pack=pack, prompt_slots=2, family=FAMILY),
            family=FAMILY))
    assert set(batch) == set(CAUSAL_FEATURES + (CAUSAL_PACKING_FEATURES if pack else ()))
    assert batch['decoder_loss_weights'].dtype == np.float32 and batch['decoder_input_mask'].any(axis=1).all()
  mixed = next(
      data.train_batches(
          data.train_dataset(gpt2_task, lengths, 'train', 4, seed=0, family=FAMILY, task_names=[gpt2_task.name]),
          family=FAMILY))
  np.testing.assert_array_equal(mixed[TASK_FEATURE], [0, 0, 0, 0])
