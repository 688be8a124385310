"""A prompt bank's prompts computed once per batch on causal LMs (`jaxprompt.models.prompt_once.task_kv`) against
the naive path (`DecoderOnlyModel(prompt_once=False)`: each row's prompt inserted in front of it): logits, rank
classification and decoding of mixed-task batches with prompts of different lengths, right and left padding, on a
rotary grouped-query model and a GPT-2 one; the multi-task prompts' gradient; the cases that keep the naive path."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.methods import prompt_bank
from jaxprompt.methods.multitask import MultiTaskPrompts
from jaxprompt.methods.prefix_tuning import prefix_tuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.methods.row_prompts import gather_rows
from jaxprompt.models.decoder_config import get_decoder_config
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.models.hooks import Hooks, TaskPrefix
from jaxprompt.models.prompt_once import prompt_kv, shared_rows, task_kv
from tests.causal_helpers import assert_same_decodes
from tests.helpers import assert_close_to_scale
from tests.method_helpers import causal_batch

CONFIGS = {'llama': get_decoder_config('causal_test_tiny'), 'gpt2': get_decoder_config('gpt2_test_tiny')}
EOS = 5
LENGTHS = {'sst2': 2, 'rte': 5, 'boolq': 4}  # mixed prompt lengths: shorter rows sit behind masked slots
TASK_IDS = np.array([1, 0, 2, 0, 1, 2], np.int32)  # rows 1 and 2 right- and left-padded (causal_batch)


def _bank(config):
  """(bank, its tree) of three prompt-tuning prompts of LENGTHS over `config`."""
  methods = {}
  for seed, (name, length) in enumerate(LENGTHS.items()):
    method = PromptTuning(length=length, embed_dim=config.emb_dim, eos_id=EOS)
    methods[name] = (method, {'prompt': np.random.RandomState(seed).uniform(-0.5, 0.5, method.shape)})
  bank, tree = prompt_bank.build_bank(methods, config, EOS)
  return bank, jax.tree.map(jnp.asarray, tree)


@pytest.fixture(scope='module', params=['llama', pytest.param('gpt2', marks=pytest.mark.slow)])
def setup(request):
  """(prompt-once model, naive model, frozen params, bank tree, a mixed-task batch)."""
  config = CONFIGS[request.param]
  bank, tree = _bank(config)
  once = DecoderOnlyModel(config, bank, eos_id=EOS)
  naive = DecoderOnlyModel(config, bank, eos_id=EOS, prompt_once=False)
  frozen = jax.jit(naive.init_params)(jax.random.PRNGKey(0))
  batch = dict(causal_batch(batch=len(TASK_IDS), vocab=config.vocab_size), task_ids=TASK_IDS)
  return once, naive, frozen, tree, batch


def _compiled(fn, *args):
  """(`fn(*args)` compiled, its XLA FLOP count)."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis()
  return compiled(*args), float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops'])


def _inputs(batch):
  return {k: batch[k] for k in ('decoder_input_tokens', 'decoder_input_mask', 'task_ids')}


def test_mixed_task_logits_equal_the_naive_path_with_fewer_flops(setup):
  once, naive, frozen, tree, batch = setup
  logits, flops = _compiled(once.logits, frozen, tree, batch)
  want, naive_flops = _compiled(naive.logits, frozen, tree, batch)
  valid = batch['decoder_input_mask'] > 0
  np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(want)[valid], atol=2e-5)
  assert flops < naive_flops  # 3 tasks x 5 rows through the layers instead of 6 rows x 5


def test_each_task_sits_at_its_own_positions_as_when_alone(setup):
  once, _, frozen, tree, _ = setup
  rows = tree['prompts']
  got = jax.jit(functools.partial(task_kv, once.module))(frozen,
                                                         TaskPrefix(rows, jnp.array(list(LENGTHS.values())),
                                                                    jnp.asarray(TASK_IDS)))
  width = rows.shape[1]
  for row, task in enumerate(TASK_IDS):
    length = list(LENGTHS.values())[task]
    alone = jax.jit(functools.partial(prompt_kv, once.module))(frozen, rows[task, :length])
    np.testing.assert_array_equal(got.mask[:, row], np.arange(width)[None].repeat(len(got.mask), 0) >= width - length)
    np.testing.assert_allclose(got.key[:, row, width - length:], alone.key[:, 0], atol=1e-5)
    np.testing.assert_allclose(got.value[:, row, width - length:], alone.value[:, 0], atol=1e-5)


def test_rank_classification_of_each_rows_own_labels_equals_the_naive_path(setup):
  once, naive, frozen, tree, batch = setup
  rs = np.random.RandomState(3)
  candidates = rs.randint(6, 40, (len(TASK_IDS), 2, 3)).astype(np.int32)
  candidates[:, 0, 1], candidates[:, 1, 2] = EOS, EOS  # labels of one and two tokens
  ranked, flops = _compiled(once.rank_classify, frozen, tree, _inputs(batch), candidates)
  want, naive_flops = _compiled(naive.rank_classify, frozen, tree, _inputs(batch), candidates)
  np.testing.assert_allclose(ranked, want, atol=1e-4)
  np.testing.assert_array_equal(np.argmax(ranked, -1), np.argmax(want, -1))
  assert flops < naive_flops


@pytest.mark.slow
def test_decoding_equals_the_naive_path(setup):
  once, naive, frozen, tree, batch = setup
  inputs = dict(_inputs(batch), decoder_target_tokens=np.zeros((len(TASK_IDS), 4), np.int32))
  assert_same_decodes(once, naive, frozen, tree, inputs)


@pytest.mark.slow  # ~3.5 s per model (two gradients compiled); the inner loop checks the logits it differentiates
@pytest.mark.parametrize('name', ['llama', 'gpt2'])
def test_multi_task_prompts_train_with_the_naive_paths_loss_and_gradient(name):
  config = CONFIGS[name]
  method = MultiTaskPrompts(tasks=('sst2', 'rte', 'boolq'), config=config, length=3, task_length=2, eos_id=EOS)
  once = DecoderOnlyModel(config, method, eos_id=EOS)
  naive = DecoderOnlyModel(config, method, eos_id=EOS, prompt_once=False)
  frozen = jax.jit(naive.init_params)(jax.random.PRNGKey(0))
  trainable = method.init(jax.random.PRNGKey(1), frozen)
  batch = dict(causal_batch(batch=len(TASK_IDS), vocab=config.vocab_size), task_ids=TASK_IDS)
  loss = lambda model: jax.jit(jax.value_and_grad(lambda t: model.loss_fn(frozen, t, batch)[0]))(trainable)
  (got, grads), (want, want_grads) = loss(once), loss(naive)
  assert_close_to_scale(got, want)
  for key in ('shared_prompt', 'task_prompts'):
    assert float(np.max(np.abs(want_grads[key]))) > 0
    assert_close_to_scale(grads[key], want_grads[key], rtol=1e-4)


def test_only_banks_of_prompts_in_front_run_once():
  table, ids = jnp.ones((2, 3, 8)), jnp.array([1, 0, 1])
  found = shared_rows(Hooks(inputs=gather_rows(table, ids, [3, 2], ['prefix', 'prefix'])))
  assert isinstance(found, TaskPrefix)
  np.testing.assert_array_equal(found.lengths, [3, 2])
  np.testing.assert_array_equal(found.task_ids, ids)
  assert shared_rows(Hooks(inputs=gather_rows(table, ids, [3, 2], ['prefix', 'suffix_before_eos']))) is None
  assert shared_rows(Hooks(inputs=gather_rows(table, ids, [3, 2], ['prefix'] * 2)), jnp.ones((3, 4), jnp.int32)) is None
  # A bank holding a K/V prefix (prefix tuning) runs its per-layer hook: the naive path.
  config = CONFIGS['llama']
  prefix = prefix_tuning(config, length=2, projection=False, initializer='normal')
  bank, tree = prompt_bank.build_bank(
      {
          'a': (PromptTuning(length=3, embed_dim=config.emb_dim), {'prompt': np.ones(
              (3, config.emb_dim))}), 'b': (prefix, jax.tree.map(np.asarray, prefix.init(jax.random.PRNGKey(0), None)))
      }, config)
  assert shared_rows(bank.hooks(tree, task_ids=ids[:2])) is None
