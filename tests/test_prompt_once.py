"""The prompt computed once per batch on causal LMs (`jaxprompt.models.prompt_once`) against the naive path
(`DecoderOnlyModel(prompt_once=False)`: the prompt inserted in every row): logits, loss, the prompt's gradient,
rank classification and decoding on a rotary model (llama3 scaling, grouped-query attention, q/k/v biases) and a
GPT-2 one, with right and left padding, under scan + remat and sharded on 8 devices; the work it saves; the cases
that keep the naive path."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.methods.prompt_tuning import PromptInput, PromptTuning
from jaxprompt.methods.row_prompts import RowPrompts
from jaxprompt.models import scan
from jaxprompt.models.decoder_config import get_decoder_config
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.prompt_once import PromptKV, prompt_kv, shared_rows
from tests.causal_helpers import assert_same_decodes
from tests.helpers import assert_close_to_scale
from tests.method_helpers import causal_batch

CONFIGS = {'llama': get_decoder_config('causal_test_tiny'), 'gpt2': get_decoder_config('gpt2_test_tiny')}
PROMPT = 6
EOS = 5
CANDIDATES = np.array([[17, EOS, 0], [30, 31, EOS]], np.int32)


def _pair(config, frozen_config=None):
  """(prompt once, naive) models of `config` sharing one method; the naive one on `frozen_config` if given."""
  method = PromptTuning(length=PROMPT, embed_dim=config.emb_dim, eos_id=EOS)
  return (DecoderOnlyModel(config, method, eos_id=EOS),
          DecoderOnlyModel(frozen_config or config, method, eos_id=EOS, prompt_once=False))


@pytest.fixture(scope='module', params=['llama', pytest.param('gpt2', marks=pytest.mark.slow)])
def setup(request):
  config = CONFIGS[request.param]
  once, naive = _pair(config)
  frozen = jax.jit(naive.init_params)(jax.random.PRNGKey(0))
  return once, naive, frozen, once.method.init(jax.random.PRNGKey(1), frozen), causal_batch(vocab=config.vocab_size)


def _compiled(fn, *args):
  """(`fn(*args)` compiled, its result, its XLA FLOP count)."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis()
  return compiled(*args), float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops'])


def _training(model, frozen, prompt, batch):
  """((loss, logits), prompt gradient) of one batch, and the FLOPs of computing them."""
  loss = lambda f, t, b: (lambda logits: (model.loss_fn(f, t, b)[0], logits))(model.logits(f, t, b))
  return _compiled(jax.value_and_grad(loss, argnums=1, has_aux=True), frozen, prompt, batch)


def _assert_same_training(once, naive, frozen, once_frozen, prompt, batch) -> tuple[float, float]:
  """Asserts equal logits (at real tokens), loss and prompt gradient; returns both paths' FLOPs."""
  ((loss, logits), grads), flops = _training(once, once_frozen, prompt, batch)
  ((want_loss, want_logits), want_grads), naive_flops = _training(naive, frozen, prompt, batch)
  valid = batch['decoder_input_mask'] > 0  # a padding position's logits mean nothing on either path
  np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(want_logits)[valid], atol=2e-5)
  assert_close_to_scale(loss, want_loss)
  assert float(np.max(np.abs(want_grads['prompt']))) > 0
  assert_close_to_scale(grads['prompt'], want_grads['prompt'], rtol=1e-4)
  return flops, naive_flops


def test_logits_loss_and_prompt_gradient_equal_the_naive_path_with_fewer_flops(setup):
  once, naive, frozen, prompt, batch = setup
  flops, naive_flops = _assert_same_training(once, naive, frozen, frozen, prompt, batch)
  assert flops < 0.8 * naive_flops  # 4 rows of 7 tokens: 6 + 28 rows through the layers instead of 4 * (6 + 7)


def _inputs(batch):
  return {k: batch[k] for k in ('decoder_input_tokens', 'decoder_input_mask')}


@pytest.mark.slow  # the inner loop runs rank classification through the prompt once in test_decoder_only_model
def test_rank_classification_equals_the_naive_path_with_fewer_flops(setup):
  once, naive, frozen, prompt, batch = setup
  ranked, flops = _compiled(once.rank_classify, frozen, prompt, _inputs(batch), CANDIDATES)
  want, naive_flops = _compiled(naive.rank_classify, frozen, prompt, _inputs(batch), CANDIDATES)
  np.testing.assert_allclose(ranked, want, atol=1e-4)
  assert flops < naive_flops


@pytest.mark.slow  # test_decoder_only_model checks these decodes against recomputed logits, equal here to naive's
def test_decoding_equals_the_naive_path(setup):
  once, naive, frozen, prompt, batch = setup
  inputs = dict(_inputs(batch), decoder_target_tokens=np.zeros((len(batch['decoder_input_tokens']), 4), np.int32))
  assert_same_decodes(once, naive, frozen, prompt, inputs)


@pytest.mark.slow
def test_scan_and_remat_compute_the_prompt_once_too():
  config = CONFIGS['llama']
  once, naive = _pair(config.replace(scan_layers=True, remat_policy='full'), config)
  frozen = jax.jit(naive.init_params)(jax.random.PRNGKey(0))
  prompt, batch = once.method.init(jax.random.PRNGKey(1), frozen), causal_batch(vocab=config.vocab_size)
  stacked = scan.stack_layers(frozen)
  _assert_same_training(once, naive, frozen, stacked, prompt, batch)
  inputs = {k: batch[k] for k in ('decoder_input_tokens', 'decoder_input_mask')}
  np.testing.assert_allclose(
      jax.jit(once.rank_classify)(stacked, prompt, inputs, CANDIDATES),
      jax.jit(naive.rank_classify)(frozen, prompt, inputs, CANDIDATES), atol=1e-4)


def test_only_a_prefix_prompt_on_unpacked_rows_without_a_layer_hook_runs_once():
  prompt = jnp.ones((3, 8))
  assert shared_rows(Hooks(inputs=PromptInput(prompt))) is prompt
  assert shared_rows(None) is None
  assert shared_rows(Hooks(inputs=PromptInput(prompt, combine='prefix_after_bos'))) is None
  assert shared_rows(Hooks(inputs=PromptInput(prompt)), segment_ids=jnp.ones((2, 5), jnp.int32)) is None
  layers = PromptKV(jnp.zeros((2, 1, 3, 2, 4)), jnp.zeros((2, 1, 3, 2, 4)))
  assert shared_rows(Hooks(inputs=PromptInput(prompt), decoder_layers=layers)) is None
  # A mixed-task batch (prompt banks, multi-task prompts): each row its own prompt.
  rows = RowPrompts(jnp.ones((2, 3, 8)), jnp.array([3, 2]), jnp.zeros((2,), jnp.int32))
  assert shared_rows(Hooks(inputs=rows)) is None


def test_the_prompt_pass_takes_dropout_when_the_step_does():
  config = CONFIGS['llama'].replace(dropout_rate=0.5)
  once, _ = _pair(config)
  params = jax.jit(once.init_params)(jax.random.PRNGKey(0))
  rows = jax.random.normal(jax.random.PRNGKey(1), (PROMPT, config.emb_dim))
  run = jax.jit(functools.partial(prompt_kv, once.module))
  plain = run(params, rows)
  assert plain.key.shape == (config.num_layers, 1, PROMPT, config.num_kv_heads, config.head_dim)
  dropped, again = (run(params, rows, {'dropout': jax.random.PRNGKey(2)}) for _ in range(2))
  np.testing.assert_array_equal(dropped.value, again.value)
  assert not np.allclose(dropped.value, plain.value)
