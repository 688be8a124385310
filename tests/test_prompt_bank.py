"""Prompt banks (`jaxprompt.methods.prompt_bank`): one batch mixing tasks, prompt lengths, combination modes and
K/V prefixes gives every row what its task gives alone — teacher-forced logits, rank classification over each
task's own labels, greedy and beam decoding — and bad banks fail with one clear error."""
import functools

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import prompt_bank
from jaxprompt.methods.per_layer_prompts import per_layer_prompts
from jaxprompt.methods.prefix_tuning import PrefixTuning, prefix_tuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from tests.method_helpers import make_batch

CFG = get_config('t5x_tiny')


@pytest.fixture(scope='module')
def frozen(fixtures_dir):
  return load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


def _prompt(length, combine, seed):
  method = PromptTuning(length=length, embed_dim=CFG.emb_dim, combine=combine)
  return method, {'prompt': np.random.RandomState(seed).uniform(-0.5, 0.5, method.shape).astype(np.float32)}


def _prefix(length, kinds, seed):
  method = prefix_tuning(CFG, length=length, kinds=kinds, projection=False, initializer='normal')
  return method, jax.tree.map(np.asarray, method.init(jax.random.PRNGKey(seed), None))


@pytest.fixture(scope='module')
def tasks():
  """Four tasks: two input prompts (lengths 3 and 5, two combination modes), two prefixes (all kinds, P=2;
  decoder self-attention only, P=4)."""
  return {
      'sst2': _prompt(3, 'prefix', 0), 'rte': _prompt(5, 'suffix_before_eos', 1),
      'boolq': _prefix(2, ('encoder_self', 'decoder_self', 'cross'), 2), 'copa': _prefix(4, ('decoder_self',), 3)
  }


def _batch(task_ids, seed=0, enc_len=8, tgt_len=4):
  rs = np.random.RandomState(seed)
  rows = len(task_ids)
  enc, tgt = rs.randint(2, CFG.vocab_size, (rows, enc_len)), rs.randint(2, CFG.vocab_size, (rows, tgt_len))
  enc[::2, 5:] = 0  # some padded rows
  enc[:, -1] = np.where(enc[:, -1] > 0, 1, 0)
  enc[::2, 4] = 1
  tgt[:, -1] = 1
  batch = make_batch(enc, tgt)
  batch['task_ids'] = np.asarray(task_ids, np.int32)
  return batch


def _rows(batch, rows):
  return {k: v[rows] for k, v in batch.items() if k != 'task_ids'}


def _alone(ids):
  """Each task with the rows that use it: [(task id, row indices)]."""
  return [(t, np.flatnonzero(np.asarray(ids) == t)) for t in sorted(set(ids))]


IDS = [0, 2, 1, 3, 3, 0, 2, 1]


def test_mixed_batch_logits_equal_each_task_alone(frozen, tasks):
  bank, tree = prompt_bank.build_bank(tasks, CFG)
  assert bank.task_names == ('sst2', 'rte', 'boolq', 'copa') and bank.input_length == 5
  batch = _batch(IDS)
  mixed = np.asarray(jax.jit(build_model(CFG, bank).logits)(frozen, tree, batch))
  for t, rows in _alone(IDS):
    method, params = tasks[bank.task_names[t]]
    alone = np.asarray(jax.jit(build_model(CFG, method).logits)(frozen, params, _rows(batch, rows)))
    np.testing.assert_allclose(mixed[rows], alone, atol=1e-5, rtol=1e-5)
  # `single` gives back each task's own method and parameters.
  for name, (method, params) in tasks.items():
    again, again_params = prompt_bank.single(bank, tree, name)
    assert type(again) is type(method)
    jax.tree.map(np.testing.assert_array_equal, again_params, params)


@pytest.mark.slow
def test_rank_classification_with_each_tasks_labels(frozen, tasks):
  """Per-row candidate sets of different sizes (zero rows pad the smaller ones) score as each task alone."""
  bank, tree = prompt_bank.build_bank(tasks, CFG)
  labels = {0: [[5, 1], [6, 7, 1]], 1: [[9, 1], [10, 1], [11, 12, 13, 1]], 2: [[14, 1], [15, 1]], 3: [[16, 1]]}

  def table(t, width=4, count=3):
    out = np.zeros((count, width), np.int32)
    for j, ids in enumerate(labels[t]):
      out[j, :len(ids)] = ids
    return out

  batch = _batch(IDS, seed=1)
  candidates = np.stack([table(t) for t in IDS])  # [b, c, lt]
  rank = jax.jit(build_model(CFG, bank).rank_classify)
  scores = np.asarray(rank(frozen, tree, batch, candidates))
  for t, rows in _alone(IDS):
    method, params = tasks[bank.task_names[t]]
    n = len(labels[t])
    alone = jax.jit(build_model(CFG,
                                method).rank_classify)(frozen, params,
                                                       {'encoder_input_tokens': batch['encoder_input_tokens'][rows]},
                                                       table(t)[:n])
    np.testing.assert_allclose(scores[rows, :n], np.asarray(alone), atol=1e-4, rtol=1e-5)


@pytest.mark.slow  # mixed-batch decoding; the inner loop keeps the bank's logits and rank scores
@pytest.mark.parametrize('search', ['greedy', 'beam'])
def test_decoding_equals_each_task_alone(frozen, tasks, search):
  bank, tree = prompt_bank.build_bank(tasks, CFG)
  batch = _batch(IDS, seed=2, tgt_len=5)
  target = {
      'encoder_input_tokens': batch['encoder_input_tokens'], 'task_ids': batch['task_ids'],
      'decoder_target_tokens': np.zeros_like(batch['decoder_target_tokens'])
  }
  options = dict(method='sample', temperature=0.0) if search == 'greedy' else dict(method='beam', num_decodes=2)
  model = build_model(CFG, bank)
  decodes, scores = jax.jit(functools.partial(model.predict_batch, **options))(frozen, tree, target)
  for t, rows in _alone(IDS):
    method, params = tasks[bank.task_names[t]]
    alone = functools.partial(build_model(CFG, method).predict_batch, **options)
    want, want_score = jax.jit(alone)(frozen, params, _rows(target, rows))
    np.testing.assert_array_equal(np.asarray(decodes)[rows], np.asarray(want))
    np.testing.assert_allclose(np.asarray(scores)[rows], np.asarray(want_score), atol=1e-4)


def test_bad_banks_and_batches(frozen, tasks):
  with pytest.raises(ConfigError, match='unique'):
    prompt_bank.PromptBank((prompt_bank.Entry('a', 3), prompt_bank.Entry('a', 3)), 32, 4, 8, (('decoder_self', 2),))
  mixed = dict(tasks, other=_prefix(2, ('cross',), 4))
  mixed['other'] = (PrefixTuning.for_config(CFG, length=2, kinds=('cross',), projection=False,
                                            relpos='none'), mixed['other'][1])
  with pytest.raises(PromptError, match='relative-position mode'):
    prompt_bank.build_bank(mixed, CFG)
  per_layer = per_layer_prompts(CFG, length=2)
  with pytest.raises(PromptError, match='neither'):
    prompt_bank.build_bank({'x': (per_layer, per_layer.init(jax.random.PRNGKey(0), frozen))}, CFG)
  bank, tree = prompt_bank.build_bank(tasks, CFG)
  batch = _batch(IDS)
  del batch['task_ids']
  with pytest.raises(ConfigError, match="'task_ids'"):
    build_model(CFG, bank).logits(frozen, tree, batch)
