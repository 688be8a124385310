"""Prefix tuning and P-tuning v2 (`jaxprompt.methods.prefix_tuning`) on the t5x fixture model: the plain network
at length 0, the MLP's collapse, cached decoding against recomputation, the prefix-only train step, overfitting,
dropout, the prefix file format and its errors, and the sharded step on 8 simulated devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import npy_io
from jaxprompt.methods import kv_prefix
from jaxprompt.methods.prefix_tuning import (
    PrefixTuning,
    p_tuning_v2,
    prefix_tuning,
    read_prefix_file,
    write_prefix_file,
)
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.models.scan import stack_layers
from jaxprompt.runtime import optim
from tests.helpers import assert_trees_equal
from tests.method_helpers import make_batch, train

CFG = get_config('t5x_tiny')
FACTORIES = {'prefix_tuning': prefix_tuning, 'p_tuning_v2': p_tuning_v2}


@pytest.fixture(scope='module')
def frozen(fixtures_dir):
  return load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


def _random_batch(seed=0, rows=3, enc_len=7, tgt_len=5):
  rs = np.random.RandomState(seed)
  enc, tgt = rs.randint(2, CFG.vocab_size, (rows, enc_len)), rs.randint(2, CFG.vocab_size, (rows, tgt_len))
  enc[0, 4:] = 0  # padding in one row
  enc[:, -1] = np.where(enc[:, -1] > 0, 1, 0)
  tgt[:, -1] = 1
  return make_batch(enc, tgt)


def _method(name, **kwargs):
  return FACTORIES[name](CFG, **kwargs)


_logits = jax.jit(lambda model, frozen, trainable, batch: model.logits(frozen, trainable, batch), static_argnums=0)


def test_zero_length_prefix_is_the_plain_network_bit_for_bit(frozen):
  """Both factories, with and without the MLP, both relpos modes: P = 0 rows on every kind = no method."""
  batch = _random_batch()
  base = np.asarray(_logits(build_model(CFG), frozen, None, batch))
  for method in (_method('prefix_tuning', length=0, kinds=('encoder_self', 'decoder_self', 'cross')),
                 _method('p_tuning_v2', length=0, relpos='none', kinds=('encoder_self', 'decoder_self', 'cross'))):
    trainable = method.init(jax.random.PRNGKey(0), frozen)
    np.testing.assert_array_equal(np.asarray(_logits(build_model(CFG, method), frozen, trainable, batch)), base)


def test_parameters_axes_and_abstract_tree(frozen):
  method = _method('prefix_tuning', length=3)
  trainable = method.init(jax.random.PRNGKey(0), frozen)
  boxed = method.abstract({})
  assert jax.tree.structure(jax.tree.map(lambda b: b.value, boxed, is_leaf=lambda x: hasattr(x, 'names'))) == \
      jax.tree.structure(trainable)
  flat = flatten_dict(boxed)
  assert flat[('cross', 'key', 'kernel')].value.shape == (512, CFG.num_decoder_layers, CFG.num_heads, CFG.head_dim)
  assert tuple(flat[('cross', 'key', 'kernel')].names) == ('prompt_embed', 'layers', 'heads', 'kv')
  assert tuple(flat[('encoder_self', 'embedding')].names) == ('prompt', 'embed')
  plain = flatten_dict(_method('p_tuning_v2', length=3).abstract({}))
  assert set(plain) == {(k, p) for k in ('encoder_self', 'decoder_self') for p in ('key', 'value')}
  assert tuple(plain[('decoder_self', 'value')].names) == kv_prefix.ROW_AXES
  # heads x head_dim need not equal emb_dim (PEFT issue #385): rows use heads and head_dim
  wide = PrefixTuning.for_config(CFG.replace(head_dim=5), length=2, projection=False, initializer='normal')
  assert wide.init(jax.random.PRNGKey(0), {})['cross']['key'].shape == (2, 2, CFG.num_heads, 5)
  # param_dtype is the parameters'; dtype the rows'
  bf16 = PrefixTuning.for_config(CFG.replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), length=2)
  t = bf16.init(jax.random.PRNGKey(0), frozen)
  assert {x.dtype for x in jax.tree.leaves(t)} == {jnp.dtype(jnp.bfloat16)}
  assert bf16.hooks(t).decoder_layers.keys['cross'].dtype == jnp.bfloat16


def test_kinds_are_independent_and_select_the_stacks(frozen):
  full = _method('prefix_tuning', length=3).init(jax.random.PRNGKey(0), frozen)
  cross = _method('prefix_tuning', length=3, kinds=['cross']).init(jax.random.PRNGKey(0), frozen)
  jax.tree.map(np.testing.assert_array_equal, cross['cross'], full['cross'])  # same draw for a kind
  hooks = _method('prefix_tuning', length=3, kinds=('cross',)).hooks(cross)
  assert hooks.encoder_layers is None and set(hooks.decoder_layers.keys) == {'cross'}
  with pytest.raises(ConfigError, match='distinct names'):
    _method('prefix_tuning', kinds=('encoder_self', 'self'))
  with pytest.raises(ConfigError, match='relpos'):
    _method('p_tuning_v2', relpos='absolute')
  with pytest.raises(ConfigError, match='PACK=False'):
    _method('p_tuning_v2').packing_slots  # pylint: disable=expression-not-assigned
  assert _method('p_tuning_v2', relpos='none').packing_slots == 0


def test_scanned_frozen_tree_gives_the_same_init_and_logits(frozen):
  method = _method('p_tuning_v2', length=4)
  trainable = method.init(jax.random.PRNGKey(2), frozen)
  scanned = stack_layers(frozen)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), method.init(jax.random.PRNGKey(2), scanned),
               trainable)
  batch = _random_batch(1)
  want = _logits(build_model(CFG, method), frozen, trainable, batch)
  got = _logits(build_model(CFG.replace(scan_layers=True), method), scanned, trainable, batch)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_inference_collapse_gives_the_logits_of_the_projected_form(frozen):
  method = _method('prefix_tuning', length=4, relpos='none')
  trainable = method.init(jax.random.PRNGKey(3), frozen)
  plain, rows = method.inference(trainable)
  assert not plain.projection and plain.kinds == method.kinds and plain.relpos == 'none'
  assert set(flatten_dict(rows)) == {(k, p) for k in method.kinds for p in ('key', 'value')}
  batch = _random_batch(2)
  np.testing.assert_allclose(_logits(build_model(CFG, plain), frozen, rows, batch),
                             _logits(build_model(CFG, method), frozen, trainable, batch), atol=1e-5, rtol=1e-5)
  assert plain.inference(rows) == (plain, rows)


def test_dropout_acts_only_when_training_with_an_rng(frozen):
  method = _method('p_tuning_v2', length=6, dropout=0.5)
  assert _method('p_tuning_v2').dropout == CFG.dropout_rate
  assert p_tuning_v2(CFG.replace(dropout_rate=0.1)).dropout == 0.1
  trainable = method.init(jax.random.PRNGKey(0), frozen)
  plain = method.hooks(trainable).encoder_layers.keys['encoder_self']
  np.testing.assert_array_equal(
      method.hooks(trainable, rng=jax.random.PRNGKey(1)).encoder_layers.keys['encoder_self'], plain)
  dropped = method.hooks(trainable, deterministic=False, rng=jax.random.PRNGKey(1)).encoder_layers.keys['encoder_self']
  again = method.hooks(trainable, deterministic=False, rng=jax.random.PRNGKey(1)).encoder_layers.keys['encoder_self']
  np.testing.assert_array_equal(dropped, again)
  zeros = np.asarray(dropped) == 0
  assert 0.3 < zeros.mean() < 0.7
  np.testing.assert_allclose(np.asarray(dropped)[~zeros], 2 * np.asarray(plain)[~zeros], rtol=1e-6)
  with pytest.raises(ConfigError, match='no rng'):
    method.hooks(trainable, deterministic=False)


# --------------------------------------------------------------------------------- decoding and scoring


# Two of the four run in the inner loop (each method once, each relpos mode once); the full suite runs all four.
@pytest.mark.parametrize('name,relpos', [
    pytest.param(n, r, marks=[pytest.mark.slow] if (n == 'prefix_tuning') == (r == 'none') else [])
    for n in sorted(FACTORIES)
    for r in ('positions', 'none')
])
def test_cached_decoding_equals_recomputation(frozen, name, relpos):
  """Through the decoding cache, with prefixes on all three kinds: greedy decodes are the step-by-step argmax of
  the teacher-forced logits of the decoded sequence, and beam search's scores (alpha 0: summed log-probs) are
  the teacher-forced scores of the beams it returns."""
  method = _method(name, length=3, relpos=relpos, kinds=('encoder_self', 'decoder_self', 'cross'))
  model = build_model(CFG, method)
  trainable = method.init(jax.random.PRNGKey(4), frozen)
  batch = _random_batch(3, rows=2, tgt_len=6)
  decode = jax.jit(functools.partial(model.predict_batch, return_all_decodes=True),
                   static_argnames=('method', 'num_decodes'))
  greedy, _ = decode(frozen, trainable, batch, method='sample', temperature=0.0, num_decodes=1)
  beams, scores = decode(frozen, trainable, batch, method='beam', num_decodes=3, alpha=0.0)
  # One teacher-forced pass over every decoded sequence: [greedy; beam 0; beam 1; beam 2] rows.
  seqs = np.concatenate([np.asarray(greedy)[:, 0]] + [np.asarray(beams)[:, b] for b in range(3)])
  enc = np.tile(batch['encoder_input_tokens'], (4, 1))
  logits = np.asarray(_logits(model, frozen, trainable, make_batch(enc, seqs)), np.float64)
  rows = len(batch['encoder_input_tokens'])
  for row in range(rows):
    ends = np.nonzero(seqs[row] == 1)[0]
    stop = ends[0] + 1 if len(ends) else seqs.shape[1]
    np.testing.assert_array_equal(logits[row, :stop].argmax(-1), seqs[row, :stop])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  token = np.take_along_axis(log_probs, seqs[..., None], -1)[..., 0] * (seqs > 0)
  want = token.sum(-1)[rows:].reshape(3, rows).T
  np.testing.assert_allclose(np.asarray(scores), want, atol=1e-4)


_CANDIDATES = np.array([[26, 83, 1], [99, 1, 0], [7, 7, 1]])


def _rank_check(frozen, kinds):
  method = _method('p_tuning_v2', length=3, kinds=kinds)
  model = build_model(CFG, method)
  trainable = method.init(jax.random.PRNGKey(5), frozen)
  enc = _random_batch(4, rows=2)['encoder_input_tokens']
  ranked = np.asarray(jax.jit(model.rank_classify)(frozen, trainable, {'encoder_input_tokens': enc}, _CANDIDATES))
  targets = np.repeat(_CANDIDATES, len(enc), axis=0)
  want = _logits(model, frozen, trainable, make_batch(np.tile(enc, (len(_CANDIDATES), 1)), targets))
  log_probs = jax.nn.log_softmax(want)
  token = np.take_along_axis(np.asarray(log_probs), targets[..., None], -1)[..., 0] * (targets > 0)
  np.testing.assert_allclose(ranked, token.sum(-1).reshape(len(_CANDIDATES), len(enc)).T, atol=1e-5)


def test_rank_classification_equals_scoring_each_candidate(frozen):
  _rank_check(frozen, ('encoder_self', 'decoder_self'))


def test_rank_classification_with_a_cross_attention_prefix(frozen):
  _rank_check(frozen, ('cross',))  # key rows once per example, the prefix mask repeated per candidate


# --------------------------------------------------------------------------------- training

OVERFIT = {'prefix_tuning': (dict(length=10, hidden=64), 1e-2), 'p_tuning_v2': (dict(length=10), 5e-2)}


@pytest.mark.parametrize('name', sorted(FACTORIES))
def test_overfits_eight_examples_with_frozen_weights_untouched(frozen, name):
  """40 Adam steps on eight distinct inputs with one target the fixture's random output layer can express (as
  prompt tuning's test; the frozen head bounds the mean loss at about 0.33): the loss falls over 80%. The frozen
  weights stay bitwise the same, and the optimizer state is Adam's two moments of the method's tree only."""
  kwargs, learning_rate = OVERFIT[name]
  model = build_model(CFG, _method(name, **kwargs), LossConfig(reduction='mean'))
  rs = np.random.RandomState(0)
  enc = rs.randint(2, 128, (8, 6))
  enc[:, -1] = 1
  frozen_device = jax.tree.map(jnp.asarray, frozen)
  before = jax.tree.map(np.array, frozen)
  state, history = train(model, frozen_device, make_batch(enc, np.tile([[26, 83, 1]], (8, 1))), 40,
                         optim.make_optimizer(optim.adam, learning_rate=learning_rate))
  assert history[-1] <= 0.2 * history[0], (history[0], history[-1])
  assert_trees_equal(frozen_device, before)
  trainable_struct = jax.tree.structure(state.trainable)
  is_moment = lambda x: jax.tree.structure(x) == trainable_struct  # pylint: disable=unnecessary-lambda-assignment
  moments = [x for x in jax.tree.leaves(state.opt_state, is_leaf=is_moment) if is_moment(x)]
  assert len(moments) == 2  # Adam's mu and nu, each shaped like the method's tree
  for m in moments:
    assert jax.tree.map(np.shape, m) == jax.tree.map(np.shape, state.trainable)
  others = [x for x in jax.tree.leaves(state.opt_state) if np.size(x) > 1]
  assert sum(np.size(x) for x in others) == 2 * sum(np.size(x) for x in jax.tree.leaves(state.trainable))


# --------------------------------------------------------------------------------- prefix files


@pytest.mark.parametrize('suffix', ['npz', 'safetensors'])
def test_prefix_file_round_trip(frozen, tmp_path, suffix):
  method = _method('prefix_tuning', length=3, kinds=('decoder_self', 'cross'), relpos='none')
  trainable = method.init(jax.random.PRNGKey(6), frozen)
  path = write_prefix_file(tmp_path / 'sub' / f'prefix.{suffix}', method, trainable)
  read, rows = read_prefix_file(path, CFG)
  plain, want = method.inference(trainable)
  assert read == plain
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), rows, want)
  batch = _random_batch(7)
  np.testing.assert_allclose(_logits(build_model(CFG, read), frozen, rows, batch),
                             _logits(build_model(CFG, method), frozen, trainable, batch), atol=1e-5)


def test_numpy_copy_is_a_prefix_file(frozen, tmp_path):
  method = _method('p_tuning_v2', length=2)
  trainable = method.init(jax.random.PRNGKey(0), frozen)
  copy = method.numpy_copy(trainable)
  assert set(copy) == {'prefix.npz'}
  assert set(copy['prefix.npz']) == {
      'encoder_self/key', 'encoder_self/value', 'decoder_self/key', 'decoder_self/value', 'relpos/positions',
      'method/prefix'
  }
  path = npy_io.write_npz(copy['prefix.npz'], tmp_path / 'prefix.npz')  # as the checkpointer writes it
  read, rows = read_prefix_file(path, CFG)
  assert read == method
  jax.tree.map(np.testing.assert_array_equal, rows, trainable)


def _bad_file(tmp_path, frozen, edit, suffix='npz'):
  method = _method('prefix_tuning', length=3, projection=False)
  arrays = dict(method.numpy_copy(method.init(jax.random.PRNGKey(0), frozen))['prefix.npz'])
  edit(arrays)
  path = tmp_path / f'bad.{suffix}'
  npy_io.write_npz(arrays, path)
  return path


@pytest.mark.parametrize('edit,message', [
    (lambda a: a.update({'cross/value': a['cross/value'][:, :, :2]}),
     r"key 'cross/value' has shape \(2, 3, 2, 8\) but the model needs \(2, 3, 4, 8\)"),
    (lambda a: a.update({'encoder_self/key': a['encoder_self/key'][:, :2]}),
     r"key 'encoder_self/value' has shape \(2, 3, 4, 8\) but the model needs \(2, 2, 4, 8\)"),
    (lambda a: a.pop('decoder_self/value'), r"missing key 'decoder_self/value'"),
    (lambda a: a.update({'self/key': a.pop('encoder_self/key')}), r"unknown key 'self/key'"),
    (lambda a: a.pop('relpos/positions'), r'exactly one relpos marker'),
    (lambda a: a.update({'relpos/none': np.zeros(0, np.int8)}), r'exactly one relpos marker'),
    (lambda a: a.update({'cross/key': a['cross/key'].astype(np.int32)}), r"'cross/key' has dtype int32"),
])
def test_bad_prefix_files_give_one_clear_error(frozen, tmp_path, edit, message):
  path = _bad_file(tmp_path, frozen, edit)
  with pytest.raises(PromptError, match=message) as info:
    read_prefix_file(path, CFG)
  assert str(path) in str(info.value)


def test_prefix_file_for_another_model_and_unreadable_files(frozen, tmp_path):
  path = _bad_file(tmp_path, frozen, lambda a: None)
  with pytest.raises(PromptError, match=r"key 'encoder_self/key' has shape \(2, 3, 4, 8\) but the model needs "
                     r'\(3, P, 4, 8\)'):
    read_prefix_file(path, CFG.replace(num_encoder_layers=3))
  with pytest.raises(PromptError, match='does not exist'):
    read_prefix_file(tmp_path / 'missing.npz', CFG)
  (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
  with pytest.raises(PromptError, match='as .safetensors'):
    read_prefix_file(tmp_path / 'junk.safetensors', CFG)
  pickled = tmp_path / 'pickled.npz'
  np.savez(pickled, **{'cross/key': np.array([{'a': 1}], dtype=object)})
  with pytest.raises(PromptError, match='without unpickling'):
    read_prefix_file(pickled, CFG)


# --------------------------------------------------------------------------------- sharding
