"""Model tuning: the same TrainState, step and loop as prompt tuning, with the whole network as the method's
trainable tree (and no frozen tree)."""
import jax
import numpy as np
import pytest

from jaxprompt.commands.groups import CheckpointConfig, DataConfig, ModelSource, Schedule
from jaxprompt.commands.train import train_model
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.methods.model_tuning import ModelTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import step as step_lib
from jaxprompt.runtime.optim import adam, make_optimizer
from jaxprompt.runtime.state import init_train_state
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import assert_trees_equal, regroup


def _batch(config, rng):
  targets = rng.integers(2, config.vocab_size, (4, 5)).astype(np.int32)
  return {
      'encoder_input_tokens': rng.integers(2, config.vocab_size, (4, 7)).astype(np.int32),
      'decoder_target_tokens': targets, 'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      'decoder_loss_weights': np.ones((4, 5), np.float32)
  }


@pytest.mark.slow
def test_the_one_train_step_trains_every_weight():
  config = get_config('test_tiny')
  model = build_model(config, ModelTuning())
  optimizer = make_optimizer(adam, 1e-2)
  params = jax.tree.map(np.asarray, jax.jit(model.init_params)(jax.random.PRNGKey(0)))
  trainable = model.method.init(jax.random.PRNGKey(1), params)
  batch = _batch(config, np.random.default_rng(0))
  step = jax.jit(lambda s, b: step_lib.train_step(model, optimizer, s, {}, b))  # no frozen tree at all
  state = init_train_state(trainable, optimizer.tx, jax.random.PRNGKey(0))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.2 * losses[0] and int(state.step) == 30
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params, jax.device_get(state.trainable))
  assert all(jax.tree.leaves(changed))  # every weight moved, not just a prompt
  poisoned = dict(batch, decoder_loss_weights=np.full((4, 5), np.nan, np.float32))
  after, metrics = step(state, poisoned)
  assert not bool(metrics['finite']) and int(after.step) == 30
  assert_trees_equal(jax.device_get(after.trainable), jax.device_get(state.trainable))


def test_train_model_bad_config(tmp_path):
  kwargs = dict(model=ModelSource(demo_model.DEMO_CONFIG),
                data=DataConfig('demo_heldout_topic', {'inputs': 8, 'targets': 4}), schedule=Schedule(train_steps=1))
  with pytest.raises(ConfigError, match='MODEL_DIR is not set'):
    train_model(None, **kwargs)
  with pytest.raises(DataError, match="unknown task or mixture 'demo_heldout_topix'"):  # no checkpoint is fine
    train_model(str(tmp_path), **regroup(kwargs, data=dict(mixture_or_task_name='demo_heldout_topix')))


@pytest.mark.slow
def test_model_tuning_resumes_bitwise_through_the_one_loop(train_kwargs, tmp_path):
  """The loop that resumes prompt tuning exactly resumes model tuning the same way (state checkpoints hold the
  whole network and its optimizer state; no numpy prompt copies)."""
  kwargs = regroup({k: v for k, v in train_kwargs.items() if k != 'method'}, evaluation=dict(split=None),
                   save_checkpoint=False, checkpoints=CheckpointConfig(keep=3), optimizer=make_optimizer(adam, 1e-3))
  whole = train_model(str(tmp_path / 'whole'), **kwargs)  # 6 steps, checkpoints every 3
  part = train_model(str(tmp_path / 'resumed'), **regroup(kwargs, schedule=dict(train_steps=3)))
  resumed = train_model(str(tmp_path / 'resumed'), **kwargs)
  assert (part.step, whole.step, resumed.step) == (3, 6, 6)
  assert_trees_equal(whole.trainable, resumed.trainable)
  assert not np.array_equal(whole.trainable['encoder']['encoder_norm']['scale'],
                            part.trainable['encoder']['encoder_norm']['scale'])
  assert whole.prompt is None and not (tmp_path / 'whole' / 'numpy_checkpoints').exists()
  assert whole.final_files == {} and whole.prompt_file is None  # save_checkpoint=False: nothing final
  with StateCheckpointer(str(tmp_path / 'resumed')) as ckpt:
    assert ckpt.all_steps() == [3, 6]
