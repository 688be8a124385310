"""On 8 devices (data, model) = 4x2: a few sharded steps of each method named in argv[2:] (default: P-tuning with
its LSTM dropout, and per-layer prompts; also the multi-task methods, on a batch mixing two tasks) equal the
single-device steps. Prints '<method> OK' for each, then 'OK'."""
import sys

import jax
import numpy as np

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.methods import multitask
from jaxprompt.methods.p_tuning import p_tuning
from jaxprompt.methods.per_layer_prompts import per_layer_prompts
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import optim, step
from jaxprompt.runtime.compiled import ShardedSteps
from jaxprompt.runtime.state import init_train_state
from tests.helpers import assert_trained_close
from tests.method_helpers import sharding_batch

assert jax.device_count() == 8
cfg = get_config('t5x_tiny', dropout_rate=0.1)  # Dropout on: the RNG must be consumed identically.
frozen = load_t5x_checkpoint(sys.argv[1])
batch = sharding_batch()
mesh = partitioning.create_mesh(model_parallel=2)
sharded_frozen = None

METHODS = {
    'p_tuning': lambda: p_tuning(cfg, length=6, dropout=0.1),
    'per_layer_prompts': lambda: per_layer_prompts(cfg, length=6, mode='replace'),
    'multitask_prompts': lambda: multitask.multitask_prompts(cfg, tasks=['a', 'b'], length=3, task_length=2),
    'multitask_prompt_tuning': lambda: multitask.multitask_prompt_tuning(cfg, tasks=['a', 'b'], length=4, rank=2),
}

for name in sys.argv[2:] or ['p_tuning', 'per_layer_prompts']:
  method = METHODS[name]()
  if method.task_names:  # rows of both tasks
    batch['task_ids'] = np.asarray([0, 1, 1, 0, 1, 0, 0, 1], np.int32)
  model = build_model(cfg, method)
  optimizer = optim.make_optimizer(optim.adam, learning_rate=0.01)
  state0 = init_train_state(method.init(jax.random.PRNGKey(0), frozen), optimizer.tx, jax.random.PRNGKey(1))
  single = jax.jit(lambda s, b, model=model, optimizer=optimizer: step.train_step(model, optimizer, s, frozen, b))
  ref = state0
  for _ in range(3):
    ref, ref_metrics = single(ref, batch)
  steps = ShardedSteps(model, optimizer, mesh, partitioning.prompt_logical_axis_rules())
  if sharded_frozen is None:
    sharded_frozen = load_t5x_checkpoint(sys.argv[1], shardings=steps.frozen_shardings)
  start = jax.tree.map(np.array, state0.trainable)  # the sharded step donates (and may free) state0's buffers
  state = steps.place_state(state0)
  for _ in range(3):
    state, metrics = steps.train_step(state, sharded_frozen, steps.shard_batch(batch))
  assert int(state.step) == 3
  for path, got in jax.tree_util.tree_leaves_with_path(state.trainable):
    assert got.sharding.is_fully_replicated, jax.tree_util.keystr(path)
  assert_trained_close(state.trainable, ref.trainable, start, steps=3)  # also: every leaf trained
  np.testing.assert_allclose(float(metrics['loss']), float(ref_metrics['loss']), rtol=1e-5)
  print(name, 'OK', flush=True)
print('OK')
