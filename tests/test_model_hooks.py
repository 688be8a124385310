"""The T5 network's hook points (`jaxprompt.models.hooks`): inputs, per-layer hidden states and K/V prefixes.

Small hook classes here implement the protocols; the tests check that the network is the plain one without
them, that scanned and unrolled stacks agree, that the decode cache keeps prefixes in effect and that prefix
columns get the documented relative-position bias.
"""
import ast
import functools
import inspect
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax import lax

from jaxprompt.errors import ConfigError
from jaxprompt.models import attention, decoding, layers
from jaxprompt.models.config import get_config
from jaxprompt.models.decoding import flat_batch_beam_expand
from jaxprompt.models.encoder_decoder import EncoderDecoderModel
from jaxprompt.models.hooks import ATTENTION_KINDS, Hooks, InputHook, KVPrefix, LayerHook
from jaxprompt.models.scan import stack_layers
from jaxprompt.models.t5 import Transformer

CFG = get_config('test_tiny')
B, LE, LD = 2, 7, 5


class PerLayer(struct.PyTreeNode):
  """K/V prefixes per attention kind ({kind: (key, value, mask)}, leaves [layers, b, p, ...]) and an
  additive hidden-state shift [layers, e] scaled by (layer + 1), so the layer index matters."""
  prefixes: dict
  shift: jax.Array | None = None
  relpos: str = struct.field(pytree_node=False, default='positions')

  def attention_prefix(self, layer, kind):
    if kind not in self.prefixes:
      return None
    key, value, mask = self.prefixes[kind]
    return KVPrefix(key, value, mask, self.relpos)

  def hidden_states(self, x, layer, stack):
    if self.shift is None:
      return x
    return x + self.shift * (layer + 1)


class Inputs(struct.PyTreeNode):
  """Prepends vectors [p, e] to the model's (the encoder's) embedded inputs."""
  vectors: jax.Array

  def __call__(self, embedded, tokens, segment_ids, *, valid, stack, deterministic):
    assert stack == 'encoder'
    vectors = jnp.broadcast_to(self.vectors, (embedded.shape[0],) + self.vectors.shape)
    valid = jnp.concatenate([jnp.ones(vectors.shape[:2], bool), valid], axis=1)
    return jnp.concatenate([vectors.astype(embedded.dtype), embedded], axis=1), valid


def _prefixes(seed, plen, batch=B, masked_front=0, kinds=ATTENTION_KINDS):
  """{kind: (key, value, mask)} with leaves [layers, batch, plen, h, d] (mask [layers, batch, plen])."""
  out = {}
  for n, kind in enumerate(kinds):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed * 10 + n))
    shape = (CFG.num_encoder_layers, batch, plen, CFG.num_heads, CFG.head_dim)
    mask = jnp.broadcast_to(jnp.arange(plen) >= masked_front, shape[:3])
    out[kind] = (jax.random.normal(k1, shape), jax.random.normal(k2, shape), mask)
  return out


@pytest.fixture(scope='module')
def setup():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, CFG.vocab_size, (B, LE))
  enc[1, 4:] = 0
  targets = rng.randint(2, CFG.vocab_size, (B, LD))
  dec_in = np.concatenate([np.zeros((B, 1), targets.dtype), targets[:, :-1]], axis=1)
  batch = tuple(jnp.asarray(x, jnp.int32) for x in (enc, dec_in, targets))
  model = Transformer(CFG)
  # Random weights of the network's shapes; its own initialisers take long to compile and are not under test.
  shapes = nn.meta.unbox(
      jax.eval_shape(functools.partial(model.init, enable_dropout=False), jax.random.PRNGKey(0), *batch)['params'])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  params = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    scale = 1.0 if 'embedding' in name else 0.1 if 'scale' in name else leaf.shape[0]**-0.5
    params.append(jnp.asarray(rng.normal(size=leaf.shape) * scale + (1.0 if 'scale' in name else 0.0), jnp.float32))
  return model, jax.tree.unflatten(treedef, params), batch


def _apply(model, params, batch, hooks):
  return model.apply({'params': params}, *batch, hooks=hooks, enable_dropout=False)


_logits = jax.jit(_apply, static_argnums=0)


def test_protocols_are_met():
  assert isinstance(PerLayer({}), LayerHook)
  assert isinstance(Inputs(jnp.zeros((1, 16))), InputHook)


def _jaxpr(model, params, batch, hooks) -> str:
  return str(jax.make_jaxpr(functools.partial(_apply, model))(params, batch, hooks))


def test_no_hooks_and_empty_prefixes_are_the_plain_network(setup):
  model, params, batch = setup
  # The same program (so bit for bit the same logits) without hooks, with empty Hooks, with identity hooks.
  base_program = _jaxpr(model, params, batch, None)
  assert _jaxpr(model, params, batch, Hooks()) == base_program
  identity = PerLayer({})
  assert _jaxpr(model, params, batch, Hooks(encoder_layers=identity, decoder_layers=identity)) == base_program
  base = _logits(model, params, batch, None)
  empty = PerLayer(_prefixes(1, 0))  # p = 0 on every attention kind
  hooks = Hooks(encoder_layers=empty, decoder_layers=empty.replace(relpos='none'))
  np.testing.assert_array_equal(_logits(model, params, batch, hooks), base)
  shift = PerLayer({}, shift=jnp.full((CFG.num_encoder_layers, CFG.emb_dim), 0.5))
  assert np.abs(_logits(model, params, batch, Hooks(encoder_layers=shift, decoder_layers=shift)) - base).max() > 1e-3


def test_masked_prefix_rows_are_ignored(setup):
  """Rows with mask False change nothing: equal to the prefix without them (rows at the same positions)."""
  model, params, batch = setup
  full = _prefixes(2, 5, masked_front=2)
  short = {k: tuple(a[:, :, 2:] for a in v) for k, v in full.items()}
  got = _logits(model, params, batch, Hooks(encoder_layers=PerLayer(full), decoder_layers=PerLayer(full)))
  want = _logits(model, params, batch, Hooks(encoder_layers=PerLayer(short), decoder_layers=PerLayer(short)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)  # only the softmax sums' order differs
  assert np.abs(want - _logits(model, params, batch, None)).max() > 1e-3


def test_the_input_hook_is_called_once_on_the_input_stack(setup, monkeypatch):
  model, params, batch = setup
  calls = []
  original = Inputs.__call__

  def counted(self, *args, **kwargs):
    calls.append(kwargs['stack'])
    return original(self, *args, **kwargs)

  monkeypatch.setattr(Inputs, '__call__', counted)
  _jaxpr(model, params, batch, Hooks(inputs=Inputs(jnp.zeros((2, CFG.emb_dim)))))
  assert calls == ['encoder']


def test_per_layer_hook_needs_the_layers_axis(setup):
  model, params, batch = setup
  deeper = PerLayer(_prefixes(1, 2, kinds=('encoder_self',)), shift=jnp.zeros((CFG.num_encoder_layers + 1, 16)))
  with pytest.raises(ConfigError, match='leading layers axis'):
    _jaxpr(model, params, batch, Hooks(encoder_layers=deeper))


def _captured_biases(monkeypatch, fn):
  """The additive attention biases [b, h, q, k] of every attention call made by `fn`, in call order."""
  seen = []
  original = attention.dot_product_attention

  def spy(query, key, value, bias, **kwargs):
    seen.append(None)
    jax.debug.callback(lambda b, n=len(seen) - 1: seen.__setitem__(n, np.asarray(b)), bias)
    return original(query, key, value, bias, **kwargs)

  monkeypatch.setattr(attention, 'dot_product_attention', spy)
  jax.block_until_ready(fn())
  return seen


def _expected_prefix_bias(table, qlen, plen, bidirectional):
  """Independent of the network: query t, prefix key j at position j - plen -> table[:, bucket]."""
  out = np.zeros((table.shape[0], qlen, plen), np.float32)
  for t in range(qlen):
    for j in range(plen):
      bucket = layers.relative_position_bucket(np.array(j - plen - t), bidirectional, CFG.relpos_num_buckets,
                                               CFG.relpos_max_distance)
      out[:, t, j] = table[:, int(bucket)]
  return out


def test_prefix_relative_position_bias(setup, monkeypatch):
  model, params, batch = setup
  plen = 6  # with LE = 7 the distances reach the log-spaced buckets of test_tiny (8 buckets, distance 16)
  for relpos in ('positions', 'none'):
    hook = PerLayer(_prefixes(3, plen), relpos=relpos)
    hooks = Hooks(Inputs(jnp.zeros((2, CFG.emb_dim))), hook, hook)
    # A fresh jit: the spy must be traced (a cached trace of `_logits` would skip it).
    biases = _captured_biases(monkeypatch, lambda: jax.jit(_apply, static_argnums=0)(model, params, batch, hooks))
    # Unrolled call order: encoder layers (self), then decoder layers (self, cross).
    enc_self, dec = biases[:CFG.num_encoder_layers], biases[CFG.num_encoder_layers:]
    dec_self, cross = dec[0::2], dec[1::2]
    enc_table = np.asarray(params['encoder']['relpos_bias']['rel_embedding'])
    dec_table = np.asarray(params['decoder']['relpos_bias']['rel_embedding'])
    qlen_enc = LE + 2  # the input hook prepends two positions (all prefix mask rows are True: no mask bias)
    for got, table, qlen, bidirectional in ([enc_self, enc_table, qlen_enc, True], [dec_self, dec_table, LD, False]):
      want = _expected_prefix_bias(table, qlen, plen, bidirectional) if relpos == 'positions' else 0.0
      for b in got:
        assert b.shape[-1] == plen + qlen
        np.testing.assert_allclose(b[:, :, :, :plen], np.broadcast_to(want, b[:, :, :, :plen].shape), atol=1e-6)
    for b in cross:
      np.testing.assert_array_equal(b[:, :, :, :plen], 0.0)
    monkeypatch.undo()


def _hooks(seed=4, plen=3, batch=B):
  """Every hook point in use: input hook, hidden-state shifts and prefixes on each attention kind."""
  shift = 0.1 * jnp.ones((CFG.num_encoder_layers, CFG.emb_dim))
  encoder = PerLayer(_prefixes(seed, plen, batch, kinds=('encoder_self',)), shift=shift)
  decoder = PerLayer(_prefixes(seed + 1, plen, batch, kinds=('decoder_self', 'cross')), shift=-shift)
  inputs = Inputs(jax.random.normal(jax.random.PRNGKey(seed), (2, CFG.emb_dim)))
  return Hooks(inputs=inputs, encoder_layers=encoder, decoder_layers=decoder)


def _hook_loss_and_grad(model, params, batch, hooks):
  """(loss, grads of the hooks' float leaves) of a scalar function of the logits."""
  leaves, treedef = jax.tree.flatten(hooks)
  is_float = [jnp.issubdtype(x.dtype, jnp.floating) for x in leaves]

  def loss(floats):
    it = iter(floats)
    h = jax.tree.unflatten(treedef, [next(it) if f else x for x, f in zip(leaves, is_float)])
    return jnp.sum(jnp.sin(_apply(model, params, batch, h)))

  floats = [x for x, f in zip(leaves, is_float) if f]
  return jax.jit(jax.value_and_grad(loss))(floats)


@pytest.fixture(scope='module')
def unrolled_grad(setup):
  model, params, batch = setup
  return _hook_loss_and_grad(model, params, batch, _hooks())


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_scanned_equals_unrolled_forward_and_hook_gradient(setup, unrolled_grad, remat):
  _, params, batch = setup
  want_loss, want_grad = unrolled_grad
  scanned = Transformer(CFG.replace(scan_layers=True, remat_policy=remat))
  got_loss, got_grad = _hook_loss_and_grad(scanned, stack_layers(params), batch, _hooks())
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for a, b in zip(got_grad, want_grad):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert all(np.abs(g).max() > 0 for g in want_grad)  # every hook array reaches the loss


def test_unrolled_layers_get_python_int_indices_under_remat(setup):
  model, params, batch = setup
  seen = []

  class Recorder(PerLayer):

    def hidden_states(self, x, layer, stack):
      seen.append((stack, layer))
      return x

  hook = Recorder({})
  _jaxpr(Transformer(CFG.replace(remat_policy='full')), params, batch, Hooks(None, hook, hook))
  assert seen == [('encoder', 0), ('encoder', 1), ('decoder', 0), ('decoder', 1)]
  assert all(type(layer) is int for _, layer in seen)


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, tokens, hooks):
  return model.apply({'params': params}, tokens, hooks=hooks, enable_dropout=False, method=Transformer.encode)


def _decoder_step(model, params, encoded, valid, hooks):
  """One incremental decoding step, as predict_batch's `tokens_to_logits`: (logits [b, vocab], cache)."""

  def step(cache, token):
    logits, mutated = model.apply({'params': params, 'cache': cache}, encoded, valid, token, token, hooks=hooks,
                                  enable_dropout=False, decode=True, max_decode_length=LD, mutable=['cache'],
                                  method=Transformer.decode)
    return logits[:, 0], mutated['cache']

  return step


def _new_cache(model, params, encoded, valid, hooks):
  """The cache a full-length decode call creates (as predict_batch's), with the prefix rows written."""
  dec = jnp.zeros((encoded.shape[0], LD), jnp.int32)
  return model.apply({'params': params}, encoded, valid, dec, dec, hooks=hooks, enable_dropout=False, decode=True,
                     mutable=['cache'], method=Transformer.decode)[1]['cache']


def test_incremental_decoding_keeps_prefixes_in_effect(setup):
  """Token by token through the cache = teacher forcing with the same hooks (decoder input, hidden-state,
  self and cross prefix hooks), from the created cache and from a zeroed one (as predict_batch makes)."""
  model, params, batch = setup
  enc, dec_in, _ = batch
  hooks = _hooks(seed=5, plen=3, batch=1)
  full = np.asarray(_logits(model, params, batch, hooks))
  assert np.abs(full - np.asarray(_logits(model, params, batch, None))).max() > 1e-3
  encoded, valid = _encode(model, params, enc, hooks)
  cache = jax.jit(_new_cache, static_argnums=0)(model, params, encoded, valid, hooks)
  for name in ('self_attention', 'encoder_decoder_attention'):
    kind = 'decoder_self' if name == 'self_attention' else 'cross'
    written = cache['decoder']['layers_1'][name]['cached_prefix_key']
    np.testing.assert_array_equal(written, np.broadcast_to(hooks.decoder_layers.prefixes[kind][0][1], written.shape))
  step = jax.jit(_decoder_step(model, params, encoded, valid, hooks))
  for start in (cache, jax.tree.map(jnp.zeros_like, cache)):
    for i in range(LD):
      logits, start = step(start, dec_in[:, i:i + 1])
      np.testing.assert_allclose(logits, full[:, i], atol=1e-5, rtol=0)


def test_beam_search_through_the_cache_equals_recomputation(setup):
  """Beam search (cache beam-expanded and gathered) with per-example prefixes [b, p] = recomputing the
  teacher-forced decoder on each beam's tokens so far at every step."""
  model, params, batch = setup
  enc = batch[0]
  hooks = _hooks(seed=6, plen=2, batch=B)
  beams = 2
  encoded, valid = _encode(model, params, enc, hooks)
  cache = jax.tree.map(jnp.zeros_like,
                       jax.eval_shape(functools.partial(_new_cache, model), params, encoded, valid, hooks))
  encoded, valid = flat_batch_beam_expand(encoded, beams), flat_batch_beam_expand(valid, beams)
  step = _decoder_step(model, params, encoded, valid, hooks)

  def cached(state):
    return step(state.cache, state.cur_token)

  def recomputed(state):
    tokens = state.sequences[:, :LD]  # BOS then the tokens so far (zeros after the current index)
    logits = model.apply({'params': params}, encoded, valid, tokens, jnp.ones_like(tokens), hooks=hooks,
                         enable_dropout=False, method=Transformer.decode)
    return lax.dynamic_index_in_dim(logits, state.cur_index, axis=1, keepdims=False), state.cache

  inputs = jnp.zeros((B, LD), jnp.int32)
  search = jax.jit(lambda fn: decoding.beam_search(inputs, cache, fn, eos_id=1, num_decodes=beams), static_argnums=0)
  (got, got_scores), (want, want_scores) = search(cached), search(recomputed)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_predict_batch_decodes_with_the_hooks_it_encodes_with():
  """No alias stands between the hooks `predict_batch` encodes with and those its decoder steps get: a bare
  `beam_hooks = hooks` read as if beams needed other hooks (they do not: see the comment there)."""
  tree = ast.parse(textwrap.dedent(inspect.getsource(EncoderDecoderModel.predict_batch)))
  aliases = [
      ast.unparse(node)
      for node in ast.walk(tree)
      if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and all(
          isinstance(t, ast.Name) for t in node.targets)
  ]
  assert not aliases, f'BaseModel.predict_batch renames a variable: {aliases}'
