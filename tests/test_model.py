"""The T5 model against t5x's reference outputs, plus scan/remat, T5 1.0, dtypes and the KV cache."""
import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxprompt.models import families, losses
from jaxprompt.models.base import BaseModel
from jaxprompt.models.config import get_config
from jaxprompt.models.scan import stack_layers, unstack_layers
from jaxprompt.models.t5 import Transformer
from jaxprompt.parallel import partitioning
from tests.helpers import assert_close_to_scale


@pytest.fixture(scope='module')
def reference(fixtures_dir):
  data = dict(np.load(fixtures_dir / 't5x_tiny' / 'reference_step0.npz'))
  params = unflatten_dict({tuple(k[len('param/'):].split('/')): v for k, v in data.items() if k.startswith('param/')})
  return data, params


def _batch(ref):
  return ref['encoder_input_tokens'], ref['decoder_input_tokens'], ref['decoder_target_tokens']


def test_param_tree_matches_t5x_names_and_shapes(reference):
  data, params = reference
  model = Transformer(get_config('t5x_tiny'))
  variables = jax.eval_shape(functools.partial(model.init, enable_dropout=False), jax.random.PRNGKey(0), *_batch(data))
  ours = {k: v.shape for k, v in flatten_dict(nn.meta.unbox(variables['params'])).items()}
  theirs = {k: v.shape for k, v in flatten_dict(params).items()}
  assert ours == theirs


def test_logical_axes_are_t5x_names():
  model = Transformer(get_config('t5x_tiny'))
  z = jnp.zeros((1, 4), jnp.int32)
  specs = flatten_dict(partitioning.logical_specs(jax.eval_shape(model.init, jax.random.PRNGKey(0), z, z, z)['params']))
  specs = {k: tuple(v) for k, v in specs.items()}
  assert specs[('token_embedder', 'embedding')] == ('vocab', 'embed')
  assert specs[('encoder', 'layers_0', 'attention', 'query', 'kernel')] == ('embed', 'joined_kv')
  assert specs[('encoder', 'layers_0', 'attention', 'out', 'kernel')] == ('joined_kv', 'embed')
  assert specs[('decoder', 'layers_1', 'mlp', 'wi_0', 'kernel')] == ('embed', 'mlp')
  assert specs[('decoder', 'layers_1', 'mlp', 'wo', 'kernel')] == ('mlp', 'embed')
  assert specs[('encoder', 'relpos_bias', 'rel_embedding')] == ('heads', 'relpos_buckets')
  assert specs[('decoder', 'decoder_norm', 'scale')] == ('embed',)
  assert specs[('decoder', 'logits_dense', 'kernel')] == ('embed', 'vocab')


def test_forward_matches_t5x(reference):
  data, params = reference
  model = Transformer(get_config('t5x_tiny'))
  logits = model.apply({'params': params}, *_batch(data), enable_dropout=False)
  np.testing.assert_allclose(logits, data['logits'], atol=1e-5, rtol=0)
  encoded, valid = model.apply({'params': params}, data['encoder_input_tokens'], enable_dropout=False,
                               method=Transformer.encode)
  np.testing.assert_allclose(encoded, data['encoder_output'], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(valid, data['encoder_input_tokens'] > 0)

  loss, z_loss, _ = losses.compute_weighted_cross_entropy(logits, data['decoder_target_tokens'],
                                                          data['decoder_loss_weights'], z_loss=1e-4)
  np.testing.assert_allclose(loss, data['loss'], atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(z_loss, data['z_loss'], atol=1e-6)
  np.testing.assert_allclose(loss - z_loss, data['cross_ent_loss'], atol=1e-5, rtol=1e-6)
  scores = losses.token_scores(logits, data['decoder_target_tokens'], data['decoder_loss_weights'])
  np.testing.assert_allclose(scores, data['token_scores'], atol=1e-5)
  np.testing.assert_allclose(scores.sum(-1), data['sequence_scores'], atol=1e-5)


def test_label_smoothing_constant_makes_perfect_prediction_zero():
  targets = jnp.array([[3, 1]])
  smoothing, vocab = 0.1, 8
  soft = jax.nn.one_hot(targets, vocab) * (1 - smoothing - smoothing / (vocab - 1)) + smoothing / (vocab - 1)
  loss, _, weight_sum = losses.compute_weighted_cross_entropy(jnp.log(soft), targets, label_smoothing=smoothing)
  np.testing.assert_allclose(loss, 0.0, atol=1e-5)
  assert weight_sum == 2


# The inner loop checks full remat (what the large configs use); the full suite all three policies.
@pytest.mark.parametrize(
    'remat', [pytest.param('none', marks=pytest.mark.slow), 'full',
              pytest.param('dots', marks=pytest.mark.slow)])
def test_scan_and_remat_match_unrolled(reference, remat):
  data, params = reference
  cfg = get_config('t5x_tiny')
  scanned = Transformer(cfg.replace(scan_layers=True, remat_policy=remat))
  stacked = stack_layers(params)
  assert stacked['encoder']['layers']['attention']['query']['kernel'].shape == (2, 32, 32)
  logits = jax.jit(lambda p: scanned.apply({'params': p}, *_batch(data), enable_dropout=False))(stacked)
  np.testing.assert_allclose(logits, data['logits'], atol=1e-5)

  def loss_fn(p, model):
    out = model.apply({'params': p}, *_batch(data), enable_dropout=False)
    return losses.compute_weighted_cross_entropy(out, data['decoder_target_tokens'])[0]

  # Jitted: op-by-op, the scanned backward pass dispatches (and compiles) every primitive on its own.
  g_scan = jax.jit(jax.grad(lambda p: loss_fn(p, scanned)))(stacked)
  g_ref = jax.jit(jax.grad(lambda p: loss_fn(p, Transformer(cfg))))(params)
  for a, b in zip(jax.tree.leaves(unstack_layers(g_scan)), jax.tree.leaves(g_ref)):
    assert_close_to_scale(a, b, rtol=1e-4)
  assert jax.tree.structure(unstack_layers(stacked)) == jax.tree.structure(params)


def test_scanned_init_has_layers_axis():
  cfg = get_config('test_tiny', scan_layers=True, remat_policy='full')
  z = jnp.ones((2, 5), jnp.int32)
  variables = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), z, z, z)
  spec = flatten_dict(partitioning.logical_specs(variables['params']))
  assert tuple(spec[('encoder', 'layers', 'attention', 'query', 'kernel')]) == ('layers', 'embed', 'joined_kv')


@pytest.mark.slow
def test_t5_1_0_tied_relu_tree_and_logit_scaling():
  cfg = get_config('test_tiny', mlp_activations=('relu',), logits_via_embedding=True)
  model = Transformer(cfg)
  enc = jnp.array([[5, 6, 7, 1]])
  dec_in, dec_tgt = jnp.array([[0, 9, 3]]), jnp.array([[9, 3, 1]])
  params = model.init(jax.random.PRNGKey(0), enc, dec_in, dec_tgt, enable_dropout=False)['params']
  params = nn.meta.unbox(params)
  keys = set(flatten_dict(params))
  assert ('decoder', 'layers_0', 'mlp', 'wi', 'kernel') in keys
  assert not any('logits_dense' in k for k in keys)
  logits = model.apply({'params': params}, enc, dec_in, dec_tgt, enable_dropout=False)

  # Recompute the tied output layer by hand from the decoder's final hidden state.
  def hidden(mdl):
    encoded, valid = mdl.encode(enc, enable_dropout=False)
    captured = {}

    def grab(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == 'decoder_norm':
        captured['y'] = out
      return out

    with nn.intercept_methods(grab):
      mdl.decode(encoded, valid, dec_in, dec_tgt, enable_dropout=False)
    return captured['y']

  y = nn.apply(hidden, model)({'params': params})
  expected = (y / np.sqrt(cfg.emb_dim)) @ params['token_embedder']['embedding'].T
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_bfloat16_activations_close_to_float32(reference):
  data, params = reference

  def forward(config, p):
    return jax.jit(lambda p: Transformer(config).apply({'params': p}, *_batch(data), enable_dropout=False))(p)

  logits32 = forward(get_config('t5x_tiny'), params)
  logits16 = forward(get_config('t5x_tiny', dtype=jnp.bfloat16), jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  assert logits16.dtype == jnp.float32  # logits_dense computes in float32, as t5x.
  assert np.all(np.isfinite(logits16))
  assert np.mean(np.argmax(logits16, -1) == np.argmax(logits32, -1)) > 0.8


def test_dropout_is_stochastic_only_when_enabled(reference):
  data, params = reference
  model = Transformer(get_config('t5x_tiny', dropout_rate=0.3))
  rngs = {'dropout': jax.random.PRNGKey(3)}
  a = model.apply({'params': params}, *_batch(data), enable_dropout=True, rngs=rngs)
  b = model.apply({'params': params}, *_batch(data), enable_dropout=True, rngs={'dropout': jax.random.PRNGKey(4)})
  c = model.apply({'params': params}, *_batch(data), enable_dropout=False)
  assert not np.allclose(a, b)
  np.testing.assert_allclose(c, data['logits'], atol=1e-5)


def test_incremental_decoding_cache_matches_teacher_forcing(reference):
  data, params = reference
  model = Transformer(get_config('t5x_tiny'))
  enc_tokens, dec_in, dec_tgt = _batch(data)
  full = model.apply({'params': params}, enc_tokens, dec_in, dec_tgt, enable_dropout=False)
  encoded, valid = model.apply({'params': params}, enc_tokens, enable_dropout=False, method=Transformer.encode)
  length = dec_in.shape[1]
  cache = jax.eval_shape(functools.partial(model.init, decode=True, enable_dropout=False), jax.random.PRNGKey(0),
                         enc_tokens, dec_in, dec_in)['cache']
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)

  @jax.jit  # one compile for every step (op by op, each step dispatches hundreds of primitives)
  def decode_step(cache, step):
    return model.apply({'params': params, 'cache': cache}, encoded, valid, step, step, enable_dropout=False,
                       decode=True, max_decode_length=length, mutable=['cache'], method=Transformer.decode)

  for i in range(length):
    logits, mutated = decode_step(cache, dec_in[:, i:i + 1])
    cache = mutated['cache']
    # Teacher forcing masks padded target positions; compare only where targets are real.
    real = dec_tgt[:, i] > 0
    np.testing.assert_allclose(np.asarray(logits[:, 0])[real], np.asarray(full[:, i])[real], atol=1e-5)


def test_t5x_checkpoint_loads_straight_into_the_scanned_layout(fixtures_dir, reference):
  from jaxprompt.checkpoints import load_t5x_checkpoint
  data, params = reference
  cfg = get_config('t5x_tiny', scan_layers=True, remat_policy='full')
  model = Transformer(cfg)
  abstract = jax.eval_shape(functools.partial(model.init, enable_dropout=False), jax.random.PRNGKey(0), *_batch(data))
  stacked = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'orbax_checkpoint_0'), scan_layers=True,
                                expected_shapes=nn.meta.unbox(abstract['params']))
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(stack_layers(params))):
    np.testing.assert_array_equal(a, b)
  logits = model.apply({'params': stacked}, *_batch(data), enable_dropout=False)
  np.testing.assert_allclose(logits, data['logits'], atol=1e-5)


@pytest.mark.slow
def test_scanned_model_decodes_like_the_unrolled_one(reference):
  """Large configs train scanned; `predict_batch` then decodes with an unscanned twin of the same weights."""
  from jaxprompt.models.families import build_model
  data, params = reference
  cfg = get_config('t5x_tiny')
  batch = {
      'encoder_input_tokens': jnp.asarray(data['encoder_input_tokens']), 'decoder_target_tokens': jnp.zeros(
          (data['encoder_input_tokens'].shape[0], 6), jnp.int32)
  }
  plain = build_model(cfg, None)
  scanned = build_model(cfg.replace(scan_layers=True, remat_policy='full'), None)
  for method in ('beam', 'sample'):
    want = plain.predict_batch(params, None, batch, method=method, num_decodes=2)
    got = jax.jit(lambda p, b: scanned.predict_batch(p, None, b, method=method, num_decodes=2))(stack_layers(params),
                                                                                                batch)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_gather_and_one_hot_embedding_agree(reference):
  """`one_hot_embedding` changes how tokens are looked up, never the result (also for the prompt's gradient)."""
  from jaxprompt.methods.prompt_tuning import PromptTuning
  from jaxprompt.models.families import build_model
  data, params = reference
  cfg = get_config('t5x_tiny')
  assert cfg.one_hot_embedding is None  # unset: one-hot on TPU, gather elsewhere
  batch = {k: jnp.asarray(data[k]) for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}
  prompt = {'prompt': jax.random.normal(jax.random.PRNGKey(1), (3, cfg.emb_dim))}
  results, gathers = [], []
  for one_hot in (True, False):
    model = build_model(cfg.replace(one_hot_embedding=one_hot), PromptTuning(3, cfg.emb_dim))
    gathers.append(str(jax.make_jaxpr(lambda p: model.logits(params, p, batch))(prompt)).count(' gather['))
    results.append(jax.jit(jax.value_and_grad(lambda p, m=model: m.loss_fn(params, p, batch)[0]))(prompt))
  assert gathers[1] == gathers[0] + 2  # the encoder's and the decoder's token lookups
  (loss_a, grad_a), (loss_b, grad_b) = results
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  assert_close_to_scale(grad_a['prompt'], grad_b['prompt'], rtol=1e-5)


def test_every_model_function_takes_frozen_then_trainable():
  """One argument order for every family's model: (self, frozen, trainable, ...). Both are trees, so a call in the other
  order runs; `loss_fn` once took (trainable, frozen) for `jax.grad`, which now takes `argnums=1`."""
  orders = {
      name: list(inspect.signature(fn).parameters)[1:3] for cls in (BaseModel, *families.registered().values())
      for name, fn in vars(cls).items()
      if inspect.isfunction(fn) and {'frozen', 'trainable'} <= set(inspect.signature(fn).parameters)
  }
  assert set(orders) >= {'logits', 'loss_fn', 'score_batch', 'encode', 'rank_classify', 'predict_batch', '_variables'}
  assert all(order == ['frozen', 'trainable'] for order in orders.values()), orders
