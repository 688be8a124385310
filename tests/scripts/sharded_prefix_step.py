"""On 8 devices (data, model) = 4x2: sharded prefix-tuning and P-tuning v2 steps equal the single-device steps,
with the K/V heads of the method's parameters sharded over 'model'."""
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.methods.prefix_tuning import p_tuning_v2, prefix_tuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import optim, step
from jaxprompt.runtime.compiled import ShardedSteps
from jaxprompt.runtime.state import init_train_state
from tests.helpers import assert_trained_close
from tests.method_helpers import sharding_batch

assert jax.device_count() == 8
cfg = get_config('t5x_tiny', dropout_rate=0.1)  # dropout on: the network's and the prefix's rngs must match
frozen = load_t5x_checkpoint(sys.argv[1])
batch = sharding_batch()
optimizer = optim.make_optimizer(optim.adam, learning_rate=1e-2)
mesh = partitioning.create_mesh(model_parallel=2)
rules = partitioning.prompt_logical_axis_rules()
heads_over_model = PartitionSpec(None, None, 'model', None)


def leaf(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def three_steps(method):
  """(sharded state, single-device state, their last metrics) after three train steps of `method`."""
  model = build_model(cfg, method)
  state0 = init_train_state(method.init(jax.random.PRNGKey(0), frozen), optimizer.tx, jax.random.PRNGKey(1))
  single = jax.jit(lambda s, b: step.train_step(model, optimizer, s, frozen, b))
  ref = state0
  for _ in range(3):
    ref, ref_metrics = single(ref, batch)
  start = jax.tree.map(np.array, state0.trainable)  # the sharded step donates state0's buffers
  steps = ShardedSteps(model, optimizer, mesh, rules)
  sharded_frozen = load_t5x_checkpoint(sys.argv[1], shardings=steps.frozen_shardings)
  state = steps.place_state(state0)
  for _ in range(3):
    state, metrics = steps.train_step(state, sharded_frozen, steps.shard_batch(batch))
  # 3e-3 of the move per step: the MLP's tanh under Adam amplifies the sharded sums' rounding in a few components
  # (one of 160 embedding entries sat 3% over 2e-3 with XLA's elemental fusion emitters).
  assert_trained_close(state.trainable, ref.trainable, start, steps=3, rtol_per_step=3e-3)
  np.testing.assert_allclose(float(metrics['loss']), float(ref_metrics['loss']), rtol=1e-5)
  assert int(state.step) == 3
  return state


# The MLP form: its output kernels keep heads on 'model'.
state = three_steps(prefix_tuning(cfg, length=5, hidden=16, dropout=0.1))
for path in [('cross', 'key', 'kernel'), ('encoder_self', 'value', 'kernel'), ('decoder_self', 'key', 'bias')]:
  spec = heads_over_model if path[-1] == 'kernel' else PartitionSpec(None, 'model', None)
  assert leaf(state.trainable, path).sharding.spec == spec, (path, leaf(state.trainable, path).sharding.spec)
  assert leaf(state.trainable, path).addressable_shards[0].data.shape[-2] == cfg.num_heads // 2, path

# The plain rows (P-tuning v2 with its prefix dropout = the model's, and every collapsed prefix): heads on 'model'.
state = three_steps(p_tuning_v2(cfg, length=5))
for path in [('encoder_self', 'key'), ('decoder_self', 'value')]:
  placed = leaf(state.trainable, path)
  assert placed.sharding.spec == heads_over_model, (path, placed.sharding.spec)
print('OK')
