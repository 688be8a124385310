"""Per-layer prompts (`jaxprompt.methods.per_layer_prompts`): what each encoder layer sees, the equivalences
with prompt tuning, scanned = unrolled, decoding through the cache, the train step, the numpy file.

Also home of `assert_decoding_matches_recomputation`, which test_p_tuning.py uses too.
"""
import functools
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import npy_io
from jaxprompt.methods import per_layer_prompts as plp
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.models.hooks import Hooks, LayerHook
from jaxprompt.models.scan import stack_layers
from jaxprompt.models.t5 import Transformer
from jaxprompt.runtime import optim
from tests.helpers import REPO, assert_close_to_scale, assert_trees_equal
from tests.method_helpers import assert_decoding_matches_recomputation, make_batch, random_batch, train

P = 4


@pytest.fixture(scope='module')
def fixture_model(fixtures_dir):
  return get_config('t5x_tiny'), load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


def _method(cfg, mode, **kw):
  return plp.per_layer_prompts(cfg, length=P, mode=mode, **kw)


class Recorder(struct.PyTreeNode):
  """Wraps a LayerHook (or none) and keeps every encoder layer's input as the layer sees it (eager runs only:
  the values must be concrete). A pytree, so the network can slice the wrapped hook per layer."""
  inner: Any
  seen: dict = struct.field(pytree_node=False)

  def attention_prefix(self, layer, kind):
    return None if self.inner is None else self.inner.attention_prefix(layer, kind)

  def hidden_states(self, x, layer, stack):
    out = x if self.inner is None else self.inner.hidden_states(x, layer, stack)
    if stack == 'encoder':
      self.seen[layer] = np.asarray(out)
    return out


def _layer_inputs(cfg, frozen, hooks, enc):
  """{layer: its input hidden states [b, l, e]} of one eager encoder pass with `hooks`."""
  rec = Recorder(hooks.encoder_layers, {})
  Transformer(cfg).apply({'params': frozen}, jnp.asarray(enc), hooks=Hooks(hooks.inputs, rec, None),
                         enable_dropout=False, method=Transformer.encode)
  return rec.seen


def test_layout_axes_and_hook_protocol(fixture_model):
  cfg, frozen = fixture_model
  for mode in plp.MODES:
    method = _method(cfg, mode)
    trainable = method.init(jax.random.PRNGKey(0), frozen)
    assert {k: v.shape for k, v in trainable.items()} == {'prompt': (P, 32), 'layers': (1, P, 32)}
    boxed = method.abstract(None)
    assert boxed['layers'].names == ('layers', 'prompt', 'prompt_embed')
    assert boxed['prompt'].names == ('prompt', 'prompt_embed')
    assert isinstance(method.hooks(trainable).encoder_layers, LayerHook)
  # 'add' starts at plain prompt tuning; 'replace' draws its blocks like the prompt (U(-0.5, 0.5)).
  assert not np.any(_method(cfg, 'add').init(jax.random.PRNGKey(0), frozen)['layers'])
  drawn = _method(cfg, 'replace').init(jax.random.PRNGKey(0), frozen)['layers']
  assert 0 < np.abs(drawn).max() <= 0.5
  with pytest.raises(ConfigError, match='decoder'):
    _method(cfg, 'replace', decoder=True)
  with pytest.raises(ConfigError, match='mode'):
    _method(cfg, 'concat')
  with pytest.raises(ConfigError, match='PACK=False'):
    _method(cfg, 'add').packing_slots  # pylint: disable=expression-not-assigned


def test_add_mode_with_zero_blocks_is_prompt_tuning_exactly(fixture_model):
  cfg, frozen = fixture_model
  method = _method(cfg, 'add')
  trainable = method.init(jax.random.PRNGKey(3), frozen)
  batch = random_batch()
  got = jax.jit(build_model(cfg, method).logits)(frozen, trainable, batch)
  plain = build_model(cfg, PromptTuning(length=P, embed_dim=cfg.emb_dim))
  want = jax.jit(plain.logits)(frozen, {'prompt': trainable['prompt']}, batch)
  np.testing.assert_array_equal(got, want)
  # Non-zero blocks do change the result.
  moved = dict(trainable, layers=trainable['layers'] + 0.5)
  assert np.abs(jax.jit(build_model(cfg, method).logits)(frozen, moved, batch) - want).max() > 1e-3


@pytest.mark.parametrize('mode', plp.MODES)
def test_each_deeper_layer_sees_its_block_at_the_prompt_positions(fixture_model, mode):
  """Layer 0 gets the input prompt untouched; layer 1's input rows 0..P-1 are its block ('replace') or the
  plain network's rows plus the block ('add'), and every other row is the plain network's."""
  cfg, frozen = fixture_model
  method = _method(cfg, mode)
  trainable = method.init(jax.random.PRNGKey(4), frozen)
  trainable['layers'] = jax.random.normal(jax.random.PRNGKey(5), trainable['layers'].shape)
  enc = random_batch()['encoder_input_tokens']
  seen = _layer_inputs(cfg, frozen, method.hooks(trainable), enc)
  plain = _layer_inputs(cfg, frozen, PromptTuning(length=P, embed_dim=32).hooks({'prompt': trainable['prompt']}), enc)
  np.testing.assert_array_equal(seen[0], plain[0])
  np.testing.assert_array_equal(seen[0][:, :P], np.broadcast_to(trainable['prompt'], seen[0][:, :P].shape))
  block = np.broadcast_to(trainable['layers'][0], seen[1][:, :P].shape)
  np.testing.assert_array_equal(seen[1][:, :P], block if mode == 'replace' else plain[1][:, :P] + block)
  np.testing.assert_array_equal(seen[1][:, P:], plain[1][:, P:])


@pytest.mark.slow
def test_replace_with_the_plain_states_is_prompt_tuning(fixture_model):
  """Replacing layer 1's prompt rows by what the plain network has there (one example) changes nothing; the
  same blocks shifted do."""
  cfg, frozen = fixture_model
  method = _method(cfg, 'replace')
  trainable = method.init(jax.random.PRNGKey(6), frozen)
  batch = {k: v[:1] for k, v in random_batch().items()}
  plain_method = PromptTuning(length=P, embed_dim=cfg.emb_dim)
  plain_states = _layer_inputs(cfg, frozen, plain_method.hooks({'prompt': trainable['prompt']}),
                               batch['encoder_input_tokens'])
  trainable['layers'] = jnp.asarray(plain_states[1][:, :P])
  want = build_model(cfg, plain_method).logits(frozen, {'prompt': trainable['prompt']}, batch)
  np.testing.assert_allclose(build_model(cfg, method).logits(frozen, trainable, batch), want, atol=1e-5, rtol=1e-5)
  shifted = dict(trainable, layers=trainable['layers'] + 0.5)
  assert np.abs(build_model(cfg, method).logits(frozen, shifted, batch) - want).max() > 1e-3


def _random_params(cfg, batch):
  """Random weights of `cfg`'s shapes (its own initialisers take long to compile and are not under test)."""
  shapes = nn.meta.unbox(
      jax.eval_shape(functools.partial(Transformer(cfg).init,
                                       enable_dropout=False), jax.random.PRNGKey(0), batch['encoder_input_tokens'],
                     batch['decoder_input_tokens'], batch['decoder_target_tokens'])['params'])
  rs = np.random.RandomState(0)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  values = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    scale = 1.0 if 'embedding' in name else 0.1 if 'scale' in name else leaf.shape[0]**-0.5
    values.append(jnp.asarray(rs.normal(size=leaf.shape) * scale + (1.0 if 'scale' in name else 0.0), jnp.float32))
  return jax.tree.unflatten(treedef, values)


def test_scanned_equals_unrolled_forward_and_gradients():
  """A 3-layer encoder (two deeper blocks, so the scanned layer index matters), scanned with remat vs unrolled,
  in 'replace' mode (where layer 0 must be skipped by index; the hook's 'add' path is the same code)."""
  cfg = get_config('test_tiny', num_encoder_layers=3)
  batch = random_batch(vocab=cfg.vocab_size)
  params = _random_params(cfg, batch)
  method = _method(cfg, 'replace')
  trainable = method.init(jax.random.PRNGKey(7), params)
  trainable['layers'] = 0.3 * jax.random.normal(jax.random.PRNGKey(8), trainable['layers'].shape)

  def loss_and_grad(config, frozen):
    model = build_model(config, method, LossConfig(reduction='mean'))
    return jax.jit(jax.value_and_grad(lambda t: model.loss_fn(frozen, t, batch)[0]))(trainable)

  want_loss, want_grad = loss_and_grad(cfg, params)
  got_loss, got_grad = loss_and_grad(cfg.replace(scan_layers=True, remat_policy='full'), stack_layers(params))
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for k in ('prompt', 'layers'):
    assert_close_to_scale(got_grad[k], want_grad[k], rtol=1e-4, err_msg=k)
  assert all(np.abs(g).max() > 0 for g in want_grad['layers'])  # both deeper blocks reach the loss


@pytest.mark.slow
def test_cached_decoding_equals_recomputation(fixture_model):
  """The method acts in the encoder only, which decoding runs once; the mode does not matter here."""
  cfg, frozen = fixture_model
  method = _method(cfg, 'replace')
  trainable = method.init(jax.random.PRNGKey(9), frozen)
  trainable['layers'] = jax.random.normal(jax.random.PRNGKey(10), trainable['layers'].shape)
  assert_decoding_matches_recomputation(build_model(cfg, method), frozen, trainable, random_batch(seed=2), length=5)


def test_train_step_keeps_frozen_weights_and_has_optimizer_state_for_the_prompts_only(fixture_model):
  cfg, frozen = fixture_model
  before = jax.tree.map(np.array, frozen)
  model = build_model(cfg, _method(cfg, 'replace'))
  state, history = train(model, frozen, random_batch(), 5, optim.make_optimizer(optim.adam, learning_rate=0.01))
  assert history[-1] < history[0]
  assert_trees_equal(frozen, before)
  # Adam's two moments mirror the trainable tree, and nothing else of a parameter's size exists.
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
  assert sorted(m.shape for m in moments) == sorted([(P, 32), (1, P, 32)] * 2)


@pytest.mark.slow
def test_overfits_eight_examples(fixture_model):
  """Eight inputs, one target the fixture's random output layer can express (see test_prompt_tuning).
  ('add' starts exactly at prompt tuning, whose own test covers it.)"""
  cfg, frozen = fixture_model
  model = build_model(cfg, plp.per_layer_prompts(cfg, length=16), LossConfig(reduction='mean'))
  rs = np.random.RandomState(0)
  enc = rs.randint(2, 128, (8, 6))
  enc[:, -1] = 1
  _, history = train(model, frozen, make_batch(enc, np.tile([[26, 83, 1]], (8, 1))), 50, optim.make_optimizer())
  assert history[-1] <= 0.25 * history[0], (history[0], history[-1])


def test_numpy_copy_round_trips_and_mismatches_are_one_error(fixture_model, tmp_path):
  cfg, frozen = fixture_model
  method = _method(cfg, 'add')
  trainable = method.init(jax.random.PRNGKey(11), frozen)
  arrays = method.numpy_copy(trainable)[plp.NUMPY_FILE]
  assert {k: (v.dtype, v.shape) for k, v in arrays.items()} == {
      'prompt': (np.float32, (P, 32)), 'layers': (np.float32, (1, P, 32)), 'mode/add': (np.int8, (0,)),
      'method/per_layer_prompts': (np.int8, (0,))
  }
  path = npy_io.write_npz(arrays, tmp_path / plp.NUMPY_FILE)
  back_method, back = plp.read_per_layer_file(path, cfg)
  assert (back_method.mode, back_method.length, back_method.num_layers) == ('add', P, cfg.num_encoder_layers)
  assert_trees_equal(back, {k: arrays[k] for k in ('prompt', 'layers')})
  batch = random_batch()
  np.testing.assert_array_equal(
      build_model(cfg, back_method).logits(frozen, back, batch),
      build_model(cfg, method).logits(frozen, trainable, batch))
  deeper = get_config('t5x_tiny', num_encoder_layers=3)
  with pytest.raises(PromptError, match=r"3-layer encoder .* needs \{'prompt': \(4, 32\), 'layers': \(2, 4, 32\)\}"):
    plp.read_per_layer_file(path, deeper)
  unmarked = npy_io.write_npz({k: arrays[k] for k in ('prompt', 'layers')}, tmp_path / 'unmarked.npz')
  with pytest.raises(PromptError, match='needs exactly one mode/<mode> marker'):
    plp.read_per_layer_file(unmarked, cfg)
  short = npy_io.write_npz({'prompt': arrays['prompt'], 'mode/add': arrays['mode/add']}, tmp_path / 'short.npz')
  with pytest.raises(PromptError, match='needs'):
    plp.read_per_layer_file(short, cfg)


def test_gin_file_binds_the_method(fixture_model):
  cfg, _ = fixture_model
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(REPO / 'gin_configs' / 'methods' / 'per_layer_prompts.gin')],
                                        ['PROMPT_INIT = None', "jaxprompt.methods.per_layer_prompts.mode = 'add'"])
    assert gin.query_parameter('%METHOD').selector == 'jaxprompt.methods.per_layer_prompts'
    method = plp.per_layer_prompts(cfg)
  finally:
    gin.clear_config()
  assert isinstance(method, plp.PerLayerPrompts)
  assert (method.length, method.mode, method.num_layers) == (100, 'add', 2)


def test_hook_under_a_traced_layer_index_keeps_layer_0():
  """As under nn.scan: layer 0 is left alone, deeper layers get their slice; the decoder is never touched."""
  hook = plp.LayerPrompts(jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3), 'encoder', 'replace')
  x = jnp.ones((1, 4, 3))
  sliced = lambda i: jax.tree.map(lambda a: a[i], hook)
  at = jax.jit(lambda i: sliced(i).hidden_states(x, i, 'encoder'))
  np.testing.assert_array_equal(at(jnp.int32(0)), x)
  np.testing.assert_array_equal(at(jnp.int32(1))[0, :2], hook.blocks[1])
  np.testing.assert_array_equal(sliced(1).hidden_states(x, 1, 'decoder'), x)
