"""Prompt tuning: placement and masks, the wrapper's scoring, the prompt-only train step, and its names."""
import importlib
import pkgutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

import jaxprompt.methods
import jaxprompt.methods.model_tuning as model_tuning_by_import
import jaxprompt.methods.prompt_tuning as prompt_tuning_by_import
from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods.prompt_tuning import PromptTuning, insert_prompt, insertion_points
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.models.t5 import Transformer
from jaxprompt.runtime import optim, step
from jaxprompt.runtime.state import init_train_state
from tests.helpers import assert_trained_close
from tests.method_helpers import make_batch

TOKENS = np.array([
    [5, 6, 7, 1, 0, 0],  # 3 tokens + EOS, padded
    [9, 1, 0, 0, 0, 0],  # 1 token + EOS
    [4, 4, 4, 4, 4, 8]
])  # full row, no EOS


def _placed(combine):
  """Runs insert_prompt on token ids standing in for embeddings (prompt rows are -1, -2)."""
  emb = jnp.asarray(TOKENS, jnp.float32)[..., None]
  prompt = jnp.array([[-1.0], [-2.0]])
  out, valid = insert_prompt(emb, TOKENS > 0, prompt,
                             insertion_points(jnp.asarray(TOKENS),
                                              jnp.asarray(TOKENS) > 0, combine))
  return np.asarray(out[..., 0]).astype(int), np.asarray(valid)


@pytest.mark.parametrize('combine,expected', [
    ('prefix', [[-1, -2, 5, 6, 7, 1, 0, 0], [-1, -2, 9, 1, 0, 0, 0, 0], [-1, -2, 4, 4, 4, 4, 4, 8]]),
    ('prefix_after_bos', [[5, -1, -2, 6, 7, 1, 0, 0], [9, -1, -2, 1, 0, 0, 0, 0], [4, -1, -2, 4, 4, 4, 4, 8]]),
    ('suffix_after_eos', [[5, 6, 7, 1, -1, -2, 0, 0], [9, 1, -1, -2, 0, 0, 0, 0], [4, 4, 4, 4, 4, 8, -1, -2]]),
    ('suffix_before_eos', [[5, 6, 7, -1, -2, 1, 0, 0], [9, -1, -2, 1, 0, 0, 0, 0], [4, 4, 4, 4, 4, 8, -1, -2]]),
])
def test_combination_places_prompt_and_keeps_padding_at_the_end(combine, expected):
  out, valid = _placed(combine)
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(valid, np.asarray(expected) != 0)


def test_unknown_combination_and_packing_a_suffix_prompt_are_rejected():
  with pytest.raises(PromptError, match='middle'):
    insertion_points(jnp.asarray(TOKENS), jnp.asarray(TOKENS) > 0, 'middle')
  with pytest.raises(PromptError, match='middle'):
    PromptTuning(length=2, embed_dim=16, combine='middle')
  method = PromptTuning(length=2, embed_dim=16, combine='suffix_after_eos')
  with pytest.raises(ConfigError, match="combine='prefix'"):
    method.packing_slots  # pylint: disable=pointless-statement
  hooks = method.hooks(method.init(jax.random.PRNGKey(0), {}))
  toks = jnp.asarray(TOKENS)
  with pytest.raises(PromptError, match='packed inputs'):
    Transformer(get_config('test_tiny')).init(jax.random.PRNGKey(0), toks, toks, toks,
                                              encoder_segment_ids=jnp.ones_like(toks), hooks=hooks,
                                              enable_dropout=False)


@pytest.fixture(scope='module')
def fixture_model(fixtures_dir):
  frozen = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  return get_config('t5x_tiny'), frozen


def test_prompt_param_path_and_encoder_masks_cover_prompt(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=3, embed_dim=cfg.emb_dim, combine='suffix_after_eos'))
  boxed = model.method.abstract(model.init_abstract(2, 6, 4)['params'])
  assert flatten_dict(boxed)[('prompt',)].value.shape == (3, cfg.emb_dim)
  assert tuple(flatten_dict(boxed)[('prompt',)].names) == ('prompt', 'prompt_embed')
  prompt = model.method.init(jax.random.PRNGKey(0), frozen)
  encoded, valid = model.encode(frozen, prompt, jnp.asarray(TOKENS))
  assert encoded.shape == (3, 9, cfg.emb_dim)
  np.testing.assert_array_equal(valid.sum(-1), (TOKENS > 0).sum(-1) + 3)
  # Padding positions cannot influence real positions: changing a padded embedding row changes nothing.
  out1, _ = model.encode(frozen, prompt, jnp.asarray(TOKENS))
  out2, _ = model.encode(frozen, {'prompt': prompt['prompt'] * 1.0}, jnp.asarray(np.where(TOKENS > 0, TOKENS, 0)))
  np.testing.assert_allclose(out1, out2)


def test_rank_classification_equals_scoring_each_candidate(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=4, embed_dim=cfg.emb_dim))
  prompt = model.method.init(jax.random.PRNGKey(1), frozen)
  enc = np.array([[5, 17, 42, 1, 0], [64, 3, 12, 9, 1]])
  candidates = np.array([[26, 83, 1], [99, 1, 0], [7, 7, 1]])
  ranked = jax.jit(model.rank_classify)(frozen, prompt, {'encoder_input_tokens': enc}, candidates)
  score = jax.jit(model.score_batch)  # one compile for the three candidates
  for c in range(len(candidates)):
    scores = score(frozen, prompt, make_batch(enc, np.tile(candidates[c], (2, 1))))
    np.testing.assert_allclose(ranked[:, c], scores, atol=1e-5)


def test_encoder_and_cross_attention_keys_run_once_per_example_in_rank_classification(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=4, embed_dim=cfg.emb_dim))
  prompt = model.method.init(jax.random.PRNGKey(1), frozen)
  enc = jnp.ones((2, 5), jnp.int32)
  cands = jnp.ones((3, 3), jnp.int32)
  jaxpr = str(
      jax.make_jaxpr(model.rank_classify, static_argnums=())(frozen, prompt, {'encoder_input_tokens': enc}, cands))
  # The encoder's first query projection sees 2 examples x 9 positions, never 6 (= 2 x 3 candidates); so do
  # the decoder's cross-attention key / value projections of the encoded inputs (one per example, not per
  # candidate).
  assert 'f32[2,9,4,8]' in jaxpr and 'f32[6,9,4,8]' not in jaxpr


def _train(cfg, frozen, model, batch, steps, optimizer, num_microbatches=1):
  prompt = model.method.init(jax.random.PRNGKey(0), frozen)
  state = init_train_state(prompt, optimizer.tx, jax.random.PRNGKey(1))
  fn = jax.jit(lambda s, b: step.train_step(model, optimizer, s, frozen, b, num_microbatches))
  history = []
  for _ in range(steps):
    state, metrics = fn(state, batch)
    history.append(float(metrics['loss']))
  return state, history


def test_frozen_params_bitwise_unchanged_and_optimizer_state_is_prompt_sized(fixture_model):
  cfg, frozen = fixture_model
  before = jax.tree.map(np.array, frozen)
  model = build_model(cfg, PromptTuning(length=5, embed_dim=cfg.emb_dim))
  opt = optim.make_optimizer()
  batch = make_batch([[5, 17, 42, 1]] * 4, [[26, 83, 1]] * 4)
  state, history = _train(cfg, frozen, model, batch, 5, opt)
  assert history[-1] < history[0]
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  prompt_size = 5 * cfg.emb_dim
  assert all(leaf.size <= prompt_size for leaf in jax.tree.leaves(state.opt_state))
  assert jax.tree.structure(state.trainable) == jax.tree.structure({'prompt': 0})
  # The jitted step's gradient is taken w.r.t. the prompt only: no buffer of a frozen kernel's shape is written.
  jaxpr = jax.make_jaxpr(lambda s, f, b: step.train_step(model, opt, s, f, b))(state, frozen, batch)
  out_shapes = {tuple(v.aval.shape) for v in jaxpr.jaxpr.outvars}
  assert (cfg.emb_dim, cfg.vocab_size) not in out_shapes and (cfg.vocab_size, cfg.emb_dim) not in out_shapes


def test_microbatched_step_equals_full_batch(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=5, embed_dim=cfg.emb_dim), LossConfig(reduction='sum'))
  opt = optim.make_optimizer(optim.adam, learning_rate=0.01)
  rs = np.random.RandomState(0)
  batch = make_batch(rs.randint(2, 128, (8, 6)), rs.randint(2, 128, (8, 3)))
  full, _ = _train(cfg, frozen, model, batch, 2, opt)
  micro, _ = _train(cfg, frozen, model, batch, 2, opt, num_microbatches=4)
  start = model.method.init(jax.random.PRNGKey(0), frozen)  # what _train starts from
  assert_trained_close(micro.trainable, full.trainable, start, steps=2)
  with pytest.raises(ConfigError, match='divisible'):
    _train(cfg, frozen, model, batch, 1, opt, num_microbatches=3)


def test_non_finite_loss_keeps_last_good_state(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=5, embed_dim=cfg.emb_dim))
  opt = optim.make_optimizer()
  state = init_train_state(model.method.init(jax.random.PRNGKey(0), frozen), opt.tx, jax.random.PRNGKey(1))
  poisoned = jax.tree.map(lambda x: x.copy(), frozen)
  poisoned['decoder']['logits_dense']['kernel'] = np.full_like(poisoned['decoder']['logits_dense']['kernel'], np.nan)
  new_state, metrics = jax.jit(lambda s, f, b: step.train_step(model, opt, s, f, b))(state, poisoned,
                                                                                     make_batch([[5, 1]], [[26, 1]]))
  assert not bool(metrics['finite'])
  assert int(new_state.step) == 0
  np.testing.assert_array_equal(new_state.trainable['prompt'], state.trainable['prompt'])


def test_an_update_that_overflows_keeps_last_good_state(fixture_model):
  """A finite loss and gradient times a huge learning rate: the updated prompt would hold inf, so the step is
  skipped and reported as a non-finite loss is."""
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=5, embed_dim=cfg.emb_dim))
  opt = optim.make_optimizer(optax.sgd, learning_rate=1e38)
  state = init_train_state(model.method.init(jax.random.PRNGKey(0), frozen), opt.tx, jax.random.PRNGKey(1))
  new_state, metrics = jax.jit(lambda s, f, b: step.train_step(model, opt, s, f, b))(state, frozen,
                                                                                     make_batch([[5, 17, 42, 1]] * 4,
                                                                                                [[26, 83, 1]] * 4))
  assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['grad_norm']))
  assert not bool(metrics['finite'])
  assert int(new_state.step) == 0
  np.testing.assert_array_equal(new_state.trainable['prompt'], state.trainable['prompt'])


@pytest.mark.slow
def test_overfits_eight_examples_on_the_t5x_fixture_model(fixture_model):
  """Eight distinct inputs, one target. The target tokens are ones the fixture's random output layer can
  express with confidence (the frozen decoder norm + logits_dense bound every token's best log-prob; EOS's is
  about -0.7), so a 90% fall is reachable through the prompt alone."""
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=50, embed_dim=cfg.emb_dim), LossConfig(reduction='mean'))
  rs = np.random.RandomState(0)
  enc = rs.randint(2, 128, (8, 6))
  enc[:, -1] = 1
  batch = make_batch(enc, np.tile([[26, 83, 1]], (8, 1)))
  _, history = _train(cfg, frozen, model, batch, 1000, optim.make_optimizer())
  assert history[-1] <= 0.1 * history[0], (history[0], history[-1])


def test_a_method_module_path_means_the_module_and_gin_names_the_factory():
  """`jaxprompt.methods.prompt_tuning` is the module however it is reached (the package once re-exported the
  factory under that name, so `import ... as` gave the function); gin's `@jaxprompt.methods.prompt_tuning` is
  the factory in it."""
  for name in ('prompt_tuning', 'model_tuning'):
    module = importlib.import_module(f'jaxprompt.methods.{name}')
    assert {'prompt_tuning': prompt_tuning_by_import, 'model_tuning': model_tuning_by_import}[name] is module
    assert gin.get_configurable(f'jaxprompt.methods.{name}') is getattr(module, name)
  for info in pkgutil.iter_modules(jaxprompt.methods.__path__):
    assert getattr(jaxprompt.methods, info.name, None) in (
        None,
        importlib.import_module(f'jaxprompt.methods.{info.name}')), f'jaxprompt.methods.{info.name} is not the module'
