"""Prompt training on an 8-device mesh, as 1 process x 8 CPU devices or as one of 2 processes x 4 devices.

usage: multihost_train.py JSON_MODES [COORDINATOR NUM_PROCESSES PROCESS_ID]

JSON_MODES maps each MODE to run, in order, to its arguments: both modes run in one pair of processes (one
distributed start-up for the two checks).

MODE `steps`: drives `ShardedSteps` on the t5x fixture model over fixed global batches; every process
  computes each batch and feeds only its own rows. A mid-run orbax checkpoint is written by all processes and
  restored. Writes per-step losses and the final prompt.
MODE `trainer`: runs `jaxprompt.train.loop.train` on a TSV task (each host reads its seqio shard), then
  records which training inputs this host's data stream yields.
Results go to `<out>.<process_id>.npz` (each mode's own `out`). With 3 extra args the process joins the localhost
coordinator.
"""
import functools
import json
import sys

from jaxprompt.parallel import multihost

MODES = json.loads(sys.argv[1])
if len(sys.argv) > 2:
  # Small timeouts: a dead peer then ends the survivor in seconds instead of minutes.
  assert multihost.maybe_initialize_distributed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                                initialization_timeout=60, heartbeat_timeout_seconds=30,
                                                shutdown_timeout_seconds=30)
else:
  assert not multihost.maybe_initialize_distributed(env={})

# pylint: disable=g-import-not-at-top,g-bad-import-order
import jax
import numpy as np

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import configs
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import compiled as sharded
from jaxprompt.runtime import optim
from jaxprompt.runtime.state import init_train_state
from jaxprompt.train import checkpoint_files
from jaxprompt.train import checkpoints as checkpointing

assert jax.device_count() == 8, jax.devices()
print(f'process {jax.process_index()}/{jax.process_count()}: local devices '
      f'{[d.id for d in jax.local_devices()]}', flush=True)
ARGS: dict = {}  # the running mode's arguments
OUT = ''  # the running mode's result file


def global_batch(index: int, size: int = 8, input_len: int = 8, target_len: int = 6) -> dict:
  """Batch `index` of a fixed sequence; every process computes all of it."""
  rng = np.random.default_rng(100 + index)
  enc = rng.integers(2, 128, (size, input_len)).astype(np.int32)
  enc[:, -2:] = 0  # Padding, so the prompt's valid mask matters.
  enc[:, -3] = 1
  targets = rng.integers(2, 128, (size, target_len)).astype(np.int32)
  targets[:, -1] = 1
  return {
      'encoder_input_tokens': enc, 'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': targets, 'decoder_loss_weights': (targets > 0).astype(np.float32)
  }


def run_steps(num_steps: int = 4, save_at: int = 2, batch_size: int = 8) -> None:
  config = get_config('t5x_tiny')
  model = build_model(config, PromptTuning(length=3, embed_dim=config.emb_dim))
  optimizer = optim.make_optimizer(learning_rate=0.3)
  mesh = partitioning.create_mesh(model_parallel=2)
  rules = partitioning.prompt_logical_axis_rules(parameter_partitioning_dims=2)
  steps = sharded.ShardedSteps(model, optimizer, mesh, rules)
  frozen = load_t5x_checkpoint(ARGS['checkpoint'], shardings=steps.frozen_shardings)
  emb = frozen['token_embedder']['embedding']
  assert emb.is_fully_addressable == (jax.process_count() == 1)
  assert len({s.data.shape for s in emb.addressable_shards}) == 1

  # The same host values everywhere, then placed as global arrays (multi-host orbax needs global leaves).
  prompt = jax.tree.map(np.asarray, model.method.init(jax.random.PRNGKey(0), frozen))
  state = steps.place_state(jax.tree.map(np.asarray, init_train_state(prompt, optimizer.tx, jax.random.PRNGKey(1))))
  rows = multihost.process_rows(steps.batch_sharding, batch_size)
  print(f'process {jax.process_index()} feeds rows {rows.start}:{rows.stop}', flush=True)

  ckpt = checkpointing.StateCheckpointer(ARGS['model_dir'], keep=2,
                                         numpy_copy=lambda st: model.method.numpy_copy(st.trainable))
  losses = []
  for i in range(num_steps):
    local = multihost.host_local_batch(global_batch(i, batch_size), steps.batch_sharding)
    state, metrics = steps.train_step(state, frozen, steps.shard_batch(local))
    losses.append(float(np.asarray(metrics['loss'].addressable_data(0))))
    if i + 1 == save_at:
      saved_prompt = np.asarray(state.trainable['prompt'].addressable_data(0))
      assert ckpt.save(save_at, state, data_position=save_at, batch_size=batch_size)
  ckpt.wait_until_finished()

  # Restore the mid-run checkpoint into the same shardings (collective: every process calls it).
  template = partitioning.abstract_with_shardings(jax.eval_shape(lambda s: s, state), steps.state_shardings(state))
  restored, meta = ckpt.restore(template, step=save_at)
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored.trainable['prompt'].addressable_data(0)), saved_prompt)
  assert int(np.asarray(restored.step.addressable_data(0))) == save_at and meta['data_position'] == save_at
  multihost.sync('numpy_prompt_written')
  np.testing.assert_array_equal(checkpoint_files.load_prompt_from_checkpoint(ARGS['model_dir'], step=save_at),
                                saved_prompt)
  np.savez(OUT, losses=np.asarray(losses), prompt=np.asarray(state.trainable['prompt'].addressable_data(0)),
           saved_prompt=saved_prompt, start=prompt['prompt'], rows=np.asarray([rows.start, rows.stop]))
  print(f'process {jax.process_index()} OK losses={losses}', flush=True)


def run_trainer() -> None:
  from jaxprompt.commands import groups
  from jaxprompt.commands import train as trainer
  from jaxprompt.data import custom
  from jaxprompt.data import pipeline as data_pipeline
  from jaxprompt.methods.prompt_tuning import prompt_tuning
  from jaxprompt.parallel import host
  # Each host's rows differ, so each alone would pick its own bucket; the global maximum decides for both.
  assert host.global_max({'a': jax.process_index(), 'b': 7}) == {'a': jax.process_count() - 1, 'b': 7}
  lengths = {'inputs': 24, 'targets': 8}  # no input is truncated: rows stay distinct
  task = custom.register_file_task('jp_multihost_tiny', train=ARGS['train'], validation=ARGS['validation'],
                                   label_set=('negative', 'positive'), vocabulary=configs.vocabulary(ARGS['vocab'], 0))
  result = trainer.train(ARGS['model_dir'], model=groups.ModelSource(get_config('t5x_tiny'), ARGS['checkpoint'], 2),
                         data=groups.DataConfig(task.name, lengths, batch_size=8, length_buckets=2),
                         schedule=groups.Schedule(4, eval_period=4, checkpoint_period=2,
                                                  log_period=1), method=functools.partial(prompt_tuning,
                                                                                          length=5), progress_bar=False)
  # What this host's training stream holds: the trainer's own pipeline, host batch = 8 / 2 processes.
  host_batch = 8 // jax.process_count()
  stream = data_pipeline.train_dataset(task, lengths, 'train', host_batch, seed=0)
  seen = set()
  for batch in stream.take(64).as_numpy_iterator():
    seen.update(tuple(row[row > 0]) for row in batch['encoder_input_tokens'])
  np.savez(OUT, prompt=result.prompt, step=result.step, prompt_file=str(result.prompt_file),
           seen=np.asarray([' '.join(map(str, r)) for r in sorted(seen)]))
  print(f'process {jax.process_index()} OK step={result.step} eval={result.eval_metrics}', flush=True)


for mode, ARGS in MODES.items():
  OUT = f'{ARGS["out"]}.{jax.process_index()}.npz'
  {'steps': run_steps, 'trainer': run_trainer}[mode]()
