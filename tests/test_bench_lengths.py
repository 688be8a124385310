"""bench/lengths.py: the synthetic length distributions match the statistics they are stated to follow."""
import numpy as np
import pytest

from bench import lengths


@pytest.fixture(scope='module')
def cal():
  return lengths.calibrate()


def test_measured_factors_are_the_ones_documented(cal):
  assert cal.factors == pytest.approx(lengths.MEASURED, abs=1e-3)
  # T5's formats with the shipped vocabulary: "sst2 sentence:" and "boolq passage: question:".
  assert cal.prefix_tokens == {'sst2_train': 7, 'sst2_validation': 7, 'boolq': 8}
  assert cal.label_ids['sst2_train'] == ((2841, 1), (1465, 1))  # negative, positive
  assert cal.label_ids['boolq'] == ((10747, 7, 15, 1), (10998, 1))  # False (3 pieces), True


@pytest.mark.parametrize('name', sorted(lengths.SHAPES))
def test_word_lengths_follow_the_stated_mean_and_std(name):
  rng = np.random.default_rng(0)
  for _, spec in lengths.SHAPES[name].fields:
    words = lengths.sample_words(spec, 100_000, rng)
    assert words.min() >= spec.min and words.max() <= spec.max
    assert words.mean() == pytest.approx(spec.mean, rel=0.03)  # clipping moves it a little
    assert words.std() == pytest.approx(spec.std, rel=0.08)


def test_examples_are_deterministic_eos_terminated_and_truncated(cal):
  shape = lengths.SHAPES['boolq']
  a = lengths.synthesize(shape, 300, 7, cal, max_inputs=128)
  b = lengths.synthesize(shape, 300, 7, cal, max_inputs=128)
  assert all(
      np.array_equal(x['inputs'], y['inputs']) and np.array_equal(x['targets'], y['targets']) for x, y in zip(a, b))
  for ex in a:
    ids = ex['inputs']
    assert ids[-1] == lengths.EOS and len(ids) <= 128
    assert ids[:-1].min() >= lengths.FIRST_ID and ids[:-1].max() < lengths.LAST_ID
    assert tuple(ex['targets']) in cal.label_ids['boolq']
  assert max(len(ex['inputs']) for ex in a) == 128  # some passages are longer than 128 tokens


def test_token_lengths_add_the_format_and_eos(cal):
  shape = lengths.SHAPES['sst2_validation']
  tokens, _ = lengths.sample_lengths(shape, 50_000, 0, cal)
  (_, spec), = shape.fields
  expected = spec.mean * cal.factors[spec.style] + cal.prefix_tokens[shape.name] + 1
  assert tokens.mean() == pytest.approx(expected, rel=0.03)
