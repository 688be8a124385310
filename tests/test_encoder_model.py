"""The encoder-only family's model (`EncoderOnlyModel`) trained with a task head beside each method (`WithHead`):
every head kind overfits a small batch, the frozen encoder stays bitwise unchanged with no optimizer state, model
tuning trains the encoder with the head, and a head run resumes exactly through the train loop."""
import functools

import jax
import numpy as np
import pytest

from jaxprompt.methods.model_tuning import ModelTuning
from jaxprompt.methods.p_tuning import p_tuning
from jaxprompt.methods.prefix_tuning import p_tuning_v2, prefix_tuning
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.methods.with_head import WithHead
from jaxprompt.models import families
from jaxprompt.models.heads import HeadConfig
from jaxprompt.runtime.optim import adam, make_optimizer
from jaxprompt.runtime.runtime import build_runtime
from jaxprompt.train import loop
from jaxprompt.train.checkpoints import StateCheckpointer
from jaxprompt.train.schedule import Schedule
from tests.encoder_helpers import fit, head_batch, tiny
from tests.helpers import assert_trees_equal

METHODS = {
    'prompt_tuning': functools.partial(prompt_tuning, length=4),
    'p_tuning_v2': functools.partial(p_tuning_v2, length=4, dropout=0.1),  # THUDM's prefix dropout
    'prefix_tuning': functools.partial(prefix_tuning, length=4, hidden=16),  # reparameterised (MLP)
    'p_tuning': functools.partial(p_tuning, length=4, encoder='mlp', hidden=16),
}
HEADS = {
    'classification': dict(num_labels=3), 'tagging': dict(num_labels=3), 'regression': {},
    'multiple_choice': dict(use_pooler=True)
}


def _model(kind: str, method: str | None, name: str = 'bert_test_tiny', dropout: float = 0.1):
  config, frozen = tiny(name)
  inner = None if method is None else METHODS[method](config)
  head = HeadConfig(kind, dropout=dropout, **HEADS[kind])
  return families.build_model(config, WithHead.for_config(config, inner, head)), frozen


@pytest.mark.parametrize('kind,method,name', [
    ('classification', 'p_tuning_v2', 'bert_test_tiny'),
    ('tagging', 'prompt_tuning', 'roberta_test_tiny'),
    pytest.param('classification', 'prompt_tuning', 'roberta_test_tiny', marks=pytest.mark.slow),
    pytest.param('tagging', 'p_tuning_v2', 'bert_test_tiny', marks=pytest.mark.slow),
    pytest.param('regression', 'prefix_tuning', 'bert_test_tiny', marks=pytest.mark.slow),
    pytest.param('multiple_choice', 'p_tuning', 'bert_test_tiny', marks=pytest.mark.slow),
])
def test_each_head_overfits_a_small_batch(kind, method, name):
  model, frozen = _model(kind, method, name)
  batch = head_batch(kind, seed=len(kind))
  state, first, last = fit(model, frozen, batch, steps=80)
  assert last < 0.15 * first, (first, last)
  predicted, _ = jax.jit(model.predict_labels)(frozen, state.trainable, batch)
  labels, weights = model.targets(batch)
  if kind == 'regression':
    np.testing.assert_allclose(np.asarray(predicted)[2:], batch['label_values'][2:], atol=0.3)
  else:
    right = (np.asarray(predicted) == np.asarray(labels))[np.asarray(weights) > 0]
    assert right.all() and right.size >= 6


def test_the_frozen_encoder_is_unchanged_and_holds_no_optimizer_state():
  """Through the runtime's compiled step: the optimizer state mirrors the method's and the head's parameters only;
  the encoder's weights are the same bits after training; a missing choice never makes the loss NaN."""
  model, frozen = _model('multiple_choice', 'prompt_tuning')
  runtime = build_runtime(model.config, model.method, None, {'inputs': 8, 'targets': 1},
                          optimizer=make_optimizer(adam, 0.05), network=frozen)
  state = loop.initial_state(runtime, make_optimizer(adam, 0.05), seed=0)
  before = jax.tree.map(np.array, state.trainable)
  batch = runtime.steps.shard_batch(head_batch('multiple_choice'))
  for _ in range(2):
    state, metrics = runtime.steps.train_step(state, runtime.frozen, batch)
  assert np.isfinite(float(metrics['loss'])) and bool(metrics['finite'])
  assert_trees_equal(jax.tree.map(np.asarray, runtime.network), frozen)
  assert set(state.trainable) == {'prompt', 'head'}
  moments = [x.shape for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sorted(moments) == sorted([x.shape for x in jax.tree.leaves(state.trainable)] * 2)  # Adam's mu and nu
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.trainable)
  assert all(jax.tree.leaves(changed))


@pytest.mark.slow
def test_model_tuning_trains_the_whole_encoder_with_its_head():
  config, frozen = tiny()
  method = WithHead.for_config(config, ModelTuning(), HeadConfig('classification', 3, dropout=0.0))
  model = families.build_model(config, method)
  state, first, last = fit(model, frozen, head_batch('classification'), steps=30, learning_rate=3e-3)
  assert method.trains_network and last < 0.1 * first
  assert set(state.trainable) == set(frozen) | {'head'}
  kernel = ('encoder', 'layers_0', 'mlp', 'wi', 'kernel')
  get = lambda tree: functools.reduce(lambda t, k: t[k], kernel, tree)
  assert not np.array_equal(get(state.trainable), get(frozen))


@pytest.mark.slow
def test_a_head_run_resumes_exactly_through_the_train_loop(tmp_path):
  """4 steps in one go equal 2 steps, a stop, and a resumed run to 4: head, prefix and optimizer state bit for bit
  (P-tuning v2 with prefix and head dropout on, so the step rng is restored too)."""
  model, frozen = _model('classification', 'p_tuning_v2')
  batches = [head_batch('classification', seed=s) for s in range(4)]
  optimizer = make_optimizer(adam, 0.05)

  runtime = build_runtime(model.config, model.method, None, {'inputs': 8, 'targets': 1}, optimizer=optimizer,
                          network=frozen)

  def train(model_dir, steps):  # each run from a fresh initial state; the compiled step is shared
    with StateCheckpointer(str(model_dir), numpy_copy=lambda s: model.method.numpy_copy(s.trainable)) as ckpt:
      return loop.run(runtime, loop.initial_state(runtime, optimizer, seed=0), ckpt, model_dir=str(model_dir),
                      batches=lambda skip: iter(batches[skip:]), batch_size=8, progress_bar=False,
                      schedule=Schedule(train_steps=steps, eval_period=100, checkpoint_period=2, log_period=1))

  whole = train(tmp_path / 'whole', 4)
  assert train(tmp_path / 'resumed', 2).step == 2
  resumed = train(tmp_path / 'resumed', 4)
  assert resumed.step == 4
  assert_trees_equal(jax.tree.map(np.asarray, resumed.state), jax.tree.map(np.asarray, whole.state))
  assert (tmp_path / 'resumed' / 'numpy_checkpoints' / 'checkpoint_4' / 'head.npz').is_file()
