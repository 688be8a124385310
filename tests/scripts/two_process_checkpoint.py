"""Two processes save and restore one sharded TrainState, agree on the step to resume from, and stop together
on a SIGTERM that only one of them receives. Run by tests/test_train_checkpoints.py:
    python two_process_checkpoint.py PROCESS_ID PORT MODEL_DIR   (twice, with PYTHONPATH at the repo root)"""
import sys

process_id, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax

jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id,
                           initialization_timeout=60)
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprompt.errors import CheckpointError
from jaxprompt.parallel.host import host_value
from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import prompt_state

mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ('data', 'model'))
host = jax.device_get(prompt_state(6, 8))


# The [6, 8] leaves are split between the two processes (embed over 'data'); everything else is replicated.
def place(x):
  spec = PartitionSpec(None, 'data') if np.shape(x) == (6, 8) else PartitionSpec()
  return jax.make_array_from_callback(np.shape(x), NamedSharding(mesh, spec), lambda index: np.asarray(x)[index])


state = jax.tree.map(place, host)
# host_value gathers the sharded prompt: collective, so the checkpointer calls it on every process.
with StateCheckpointer(model_dir, numpy_copy=lambda s: {'prompt.npy': host_value(s.trainable['prompt'])}) as ckpt:
  try:
    ckpt.save(1, jax.tree.map(np.asarray, host), data_position=0)
    raise AssertionError('a host-local state was saved')
  except CheckpointError as e:
    assert 'host-local' in str(e) and 'step' in str(e), e
  assert ckpt.save(4, state, data_position=40 + process_id * 0, metrics={'accuracy': 0.5})
  ckpt.wait_until_finished()
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored, meta = ckpt.restore(template)
  # Resuming agrees across processes on the step to resume from.
  assert ckpt.restore_latest(template, batch_size=8)[1] == meta
assert meta['step'] == 4 and meta['data_position'] == 40
assert restored.trainable['prompt'].sharding == state.trainable['prompt'].sharding
for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(host)):
  got = np.asarray(multihost_utils.process_allgather(got, tiled=True))
  assert got.dtype == want.dtype and got.tobytes() == np.asarray(want).tobytes()
multihost_utils.sync_global_devices('saved')
assert load_prompt_from_checkpoint(model_dir).tobytes() == np.asarray(host.trainable['prompt']).tobytes()

# Preemption: a SIGTERM on process 1 alone must stop both processes at the same step.
import os
import signal
import time

from jaxprompt.train.preemption import PreemptionGuard

with PreemptionGuard() as guard:
  assert guard.mode == 'jax', guard.mode
  for step in range(400):
    multihost_utils.sync_global_devices(f'step{step}')  # the lockstep that real training's collectives give
    if step == 3 and process_id == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    if guard.should_stop(step):
      print(f'stopped at {step}')
      break
    time.sleep(0.02)
print('OK')
