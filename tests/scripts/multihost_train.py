"""Trains the prompt of the t5x fixture model for a few steps on an 8-device ('data', 'model') = (4, 2) mesh.

Run as one process with 8 CPU devices, or as one of 2 processes with 4 devices each (then it joins the
localhost coordinator through `maybe_initialize_distributed`). Every process builds the same fixed global
batches and feeds only its own rows; the prompt, optimizer state and step go through an orbax checkpoint
written by all processes and restored again. Writes the per-step losses and the final prompt as an .npz
(process 0 of a multi-process run writes `<out>`, other processes `<out>.<process_id>`).

usage: multihost_train.py FIXTURE_CKPT MODEL_DIR OUT [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""
import os
import sys

from jaxprompt.training import multihost

ckpt_path, model_dir, out = sys.argv[1:4]
if len(sys.argv) > 4:
  coordinator, num_processes, process_id = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
  # Small timeouts: a dead peer then ends the survivor in seconds instead of minutes.
  assert multihost.maybe_initialize_distributed(coordinator, num_processes, process_id, initialization_timeout=60,
                                                heartbeat_timeout_seconds=15, shutdown_timeout_seconds=15)
else:
  assert not multihost.maybe_initialize_distributed(env={})

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from jaxprompt import partitioning  # pylint: disable=g-import-not-at-top
from jaxprompt.checkpoints import load_t5x_checkpoint  # pylint: disable=g-import-not-at-top
from jaxprompt.models.config import get_config  # pylint: disable=g-import-not-at-top
from jaxprompt.models.prompt_model import PromptModel  # pylint: disable=g-import-not-at-top
from jaxprompt.prompts.module import Prompt  # pylint: disable=g-import-not-at-top
from jaxprompt.training import checkpointing, optim, sharded, step  # pylint: disable=g-import-not-at-top

STEPS, SAVE_AT, GLOBAL_BATCH, INPUT_LEN, TARGET_LEN = 4, 2, 8, 8, 6
assert jax.device_count() == 8, jax.devices()
print(f'process {jax.process_index()}/{jax.process_count()}: local devices '
      f'{[d.id for d in jax.local_devices()]}', flush=True)

config = get_config('t5x_tiny')
model = PromptModel(config, Prompt(length=3, embed_dim=config.emb_dim))
optimizer = optim.make_optimizer(learning_rate=0.3)
mesh = partitioning.create_mesh(model_parallel=2)
rules = partitioning.prompt_logical_axis_rules(parameter_partitioning_dims=2)
steps = sharded.ShardedSteps(model, optimizer, mesh, rules)
frozen = load_t5x_checkpoint(ckpt_path, shardings=steps.frozen_shardings)
emb = frozen['token_embedder']['embedding']
assert not emb.is_fully_addressable or jax.process_count() == 1
assert len({s.data.shape for s in emb.addressable_shards}) == 1

# The same host values everywhere, then placed as global arrays (multi-host orbax needs global leaves).
prompt = jax.tree.map(np.asarray, model.init_prompt(jax.random.PRNGKey(0), frozen))
state = jax.tree.map(np.asarray, step.init_train_state(prompt, optimizer, jax.random.PRNGKey(1)))
state = steps.place_state(state)


def global_batch(index: int) -> dict:
  """Batch `index` of a fixed sequence; every process computes all of it and keeps its own rows."""
  rng = np.random.default_rng(100 + index)
  enc = rng.integers(2, 128, (GLOBAL_BATCH, INPUT_LEN)).astype(np.int32)
  enc[:, -2:] = 0  # Padding, so the prompt's valid mask matters.
  enc[:, -3] = 1
  targets = rng.integers(2, 128, (GLOBAL_BATCH, TARGET_LEN)).astype(np.int32)
  targets[:, -1] = 1
  dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in, 'decoder_target_tokens': targets,
          'decoder_loss_weights': (targets > 0).astype(np.float32)}


rows = multihost.process_rows(steps.batch_sharding, GLOBAL_BATCH)
print(f'process {jax.process_index()} feeds rows {rows.start}:{rows.stop}', flush=True)
assert rows.stop - rows.start == GLOBAL_BATCH // jax.process_count()

ckpt = checkpointing.PromptCheckpointer(model_dir, keep=2)
losses = []
for i in range(STEPS):
  local = multihost.host_local_batch(global_batch(i), steps.batch_sharding)
  state, metrics = steps.train_step(state, frozen, steps.shard_batch(local))
  losses.append(float(np.asarray(metrics['loss'].addressable_data(0))))
  if i + 1 == SAVE_AT:
    saved_prompt = np.asarray(state.prompt['prompt'].addressable_data(0))
    assert ckpt.save(SAVE_AT, state, data_position=SAVE_AT * GLOBAL_BATCH)
ckpt.wait_until_finished()

# Restore the mid-run checkpoint into the same shardings (collective: every process calls it).
template = partitioning.abstract_with_shardings(jax.eval_shape(lambda s: s, state), steps.state_shardings(state))
restored, meta = ckpt.restore(template, step=SAVE_AT)
ckpt.close()
restored_prompt = np.asarray(restored.prompt['prompt'].addressable_data(0))
np.testing.assert_array_equal(restored_prompt, saved_prompt)
assert int(np.asarray(restored.step.addressable_data(0))) == SAVE_AT
assert meta['data_position'] == SAVE_AT * GLOBAL_BATCH

multihost.sync('numpy_prompt_written')
numpy_prompt = checkpointing.load_prompt_from_checkpoint(model_dir, step=SAVE_AT)
np.testing.assert_array_equal(numpy_prompt, saved_prompt)

final = np.asarray(state.prompt['prompt'].addressable_data(0))
target = out if multihost.is_primary() else f'{out}.{jax.process_index()}'
np.savez(target, losses=np.asarray(losses), prompt=final, saved_prompt=saved_prompt,
         rows=np.asarray([rows.start, rows.stop]))
print(f'process {jax.process_index()} OK losses={losses}', flush=True)
