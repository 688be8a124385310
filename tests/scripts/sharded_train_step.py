"""On 8 devices (data, model) = 4x2: a few sharded prompt-tuning steps equal the single-device steps."""
import sys

import jax
import numpy as np

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.methods.prompt_tuning import PromptTuning
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
model = build_model(cfg, PromptTuning(length=6, embed_dim=cfg.emb_dim))
optimizer = optim.make_optimizer()
frozen = load_t5x_checkpoint(sys.argv[1])
batch = sharding_batch()
state0 = init_train_state(model.method.init(jax.random.PRNGKey(0), frozen), optimizer.tx, jax.random.PRNGKey(1))

single = jax.jit(lambda s, b: step.train_step(model, optimizer, s, frozen, b))
ref = state0
for _ in range(3):
  ref, ref_metrics = single(ref, batch)

mesh = partitioning.create_mesh(model_parallel=2)
steps = ShardedSteps(model, optimizer, mesh, partitioning.prompt_logical_axis_rules())
sharded_frozen = load_t5x_checkpoint(sys.argv[1], shardings=steps.frozen_shardings)
emb = sharded_frozen['token_embedder']['embedding']
assert emb.sharding.spec == jax.sharding.PartitionSpec('model', None), emb.sharding
start = jax.tree.map(np.array, state0.trainable)  # the sharded step donates state0's buffers
state = steps.place_state(state0)
for _ in range(3):
  state, metrics = steps.train_step(state, sharded_frozen, steps.shard_batch(batch))
assert state.trainable['prompt'].sharding.is_fully_replicated
assert_trained_close(state.trainable, ref.trainable, start, steps=3)
np.testing.assert_allclose(float(metrics['loss']), float(ref_metrics['loss']), rtol=1e-5)
assert int(state.step) == 3
print('OK')
