"""Prompt-only training checkpoints (orbax) and the preemption guard."""
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import CheckpointError, ConfigError, PromptError
from jaxprompt.train.checkpoints import PromptCheckpointer, export_prompt, load_prompt_from_checkpoint
from jaxprompt.train.optim import adam, make_optimizer
from jaxprompt.train.preemption import PreemptionGuard
from jaxprompt.train.step import TrainState, init_train_state
from tests.helpers import REPO


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))  # one compile instead of dozens of eager ops
def _state(length=5, embed=32, seed=0, step=7) -> TrainState:
  """A TrainState after one Adafactor update, so every optimizer leaf holds non-trivial values."""
  optimizer = make_optimizer()
  key = jax.random.key(seed)
  prompt = {'prompt': jax.random.normal(key, (length, embed), jnp.float32)}
  state = init_train_state(prompt, optimizer, jax.random.key(seed + 1))
  grads = {'prompt': jax.random.normal(jax.random.fold_in(key, 1), (length, embed), jnp.float32)}
  _, opt_state = optimizer.tx.update(grads, state.opt_state, prompt)
  return state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _prompt(state):
  return np.asarray(state.prompt['prompt'])


def test_roundtrip_is_bitwise_onto_abstract_and_concrete_templates(tmp_path):
  state = _state()
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert ckpt.save(7, state, data_position=1234, metrics={'loss': np.float32(2.5), 'accuracy': jnp.asarray(0.75)})
    assert not ckpt.save(7, state, data_position=1234)  # the step exists already
    ckpt.wait_until_finished()
    assert np.count_nonzero(np.asarray(state.opt_state[0].v['prompt'])) > 0
    restored, meta = ckpt.restore(_abstract(state))
    _assert_bitwise_equal(restored, state)
    assert isinstance(restored, TrainState)
    assert meta == {'step': 7, 'data_position': 1234, 'metrics': {'loss': 2.5, 'accuracy': 0.75}}
  # A fresh checkpointer (a restarted job) restores onto concrete arrays too.
  template = jax.tree.map(jnp.zeros_like, state)
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 7
    restored, meta = ckpt.restore(template, step=7)
  _assert_bitwise_equal(restored, state)
  assert meta['data_position'] == 1234


def test_keeps_latest_n_and_best_and_prunes_numpy_copies(tmp_path):
  state = _state()
  history = [(10, {'accuracy': 0.3}), (20, {'loss': 1.0}), (30, {'accuracy': 0.9}), (40, {'accuracy': 0.1}),
             (50, None), (60, {'accuracy': 0.5})]
  with PromptCheckpointer(str(tmp_path), keep=2, best_metric='accuracy', keep_best=1) as ckpt:
    for step, metrics in history:
      assert ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), data_position=step, metrics=metrics)
    ckpt.wait_until_finished()
    # 50 and 60 are the newest two; 30 has the best accuracy though it is older than both.
    assert ckpt.all_steps() == [30, 50, 60]
    assert ckpt.best_step() == 30 and ckpt.latest_step() == 60
  on_disk = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert on_disk == [30, 50, 60]
  numpy_dirs = sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir())
  assert numpy_dirs == ['checkpoint_30', 'checkpoint_50', 'checkpoint_60']
  # Metrics are read back from disk after a restart.
  with PromptCheckpointer(str(tmp_path), keep=2, best_metric='accuracy', keep_best=1) as ckpt:
    assert ckpt.all_steps() == [30, 50, 60] and ckpt.best_step() == 30
    assert ckpt.restore(_abstract(state), step=30)[1]['metrics'] == {'accuracy': 0.9}


def test_best_mode_min_and_plain_latest_n(tmp_path):
  state = _state()
  with PromptCheckpointer(str(tmp_path / 'min'), keep=1, best_metric='loss', best_mode='min') as ckpt:
    for step, loss in [(1, 2.0), (2, 1.0), (3, 3.0), (4, None)]:
      ckpt.save(step, state, data_position=0, metrics=None if loss is None else {'loss': loss})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
  with PromptCheckpointer(str(tmp_path / 'plain'), keep=2, save_numpy=False) as ckpt:
    for step in range(1, 5):
      ckpt.save(step, state, data_position=0, metrics={'accuracy': float(step)})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None
    assert not ckpt.save(2, state, data_position=0)  # not after the latest step
  assert not (tmp_path / 'plain' / 'numpy_checkpoints').exists()


def test_numpy_copy_is_float32_prompt_and_load_prompt_finds_it(tmp_path):
  state = _state(6, 16)
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(3, state, data_position=0)
    ckpt.save(5, state.replace(prompt={'prompt': state.prompt['prompt'] * 2}), data_position=0)
  npy = tmp_path / 'numpy_checkpoints' / 'checkpoint_5' / 'prompt.npy'
  copy = np.load(npy, allow_pickle=False)
  assert copy.dtype == np.float32 and copy.shape == (6, 16)
  np.testing.assert_array_equal(copy, _prompt(state) * 2)
  assert not [p for p in npy.parent.iterdir() if p.name != 'prompt.npy']  # no temp files left behind
  for where, step in [(tmp_path, None), (tmp_path / 'checkpoints', None), (tmp_path / 'checkpoints' / '5', None),
                      (npy.parent, None), (npy, None), (tmp_path, 5)]:
    np.testing.assert_array_equal(load_prompt_from_checkpoint(str(where), step), _prompt(state) * 2)
  np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path), 3), _prompt(state))
  shutil.rmtree(tmp_path / 'numpy_checkpoints')  # falls back to the orbax checkpoint
  np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path)), _prompt(state) * 2)
  with pytest.raises(CheckpointError, match=r'step 4 .*have \[3, 5\]'):
    load_prompt_from_checkpoint(str(tmp_path), 4)
  with pytest.raises(CheckpointError, match='step 5, not of the requested step 3'):
    load_prompt_from_checkpoint(str(tmp_path / 'checkpoints' / '5'), 3)
  with pytest.raises(CheckpointError, match='missing_dir'):
    load_prompt_from_checkpoint(str(tmp_path / 'missing_dir'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(CheckpointError, match='no prompt checkpoints in .*empty'):
    load_prompt_from_checkpoint(str(tmp_path / 'empty'))
  (tmp_path / 'broken.npy').write_bytes(b'not numpy')
  with pytest.raises(CheckpointError, match='cannot read prompt file .*broken.npy'):
    load_prompt_from_checkpoint(str(tmp_path / 'broken.npy'))
  np.save(tmp_path / 'flat.npy', np.zeros(4, np.float32))
  with pytest.raises(CheckpointError, match=r'flat.npy holds shape \(4,\)'):
    load_prompt_from_checkpoint(str(tmp_path / 'flat.npy'))
  (tmp_path / 'checkpoints' / '5' / 'commit_success.txt').unlink()
  (tmp_path / 'checkpoints' / '5' / '_CHECKPOINT_METADATA').unlink()
  with pytest.raises(CheckpointError, match=r'checkpoints/5 is incomplete'):
    load_prompt_from_checkpoint(str(tmp_path / 'checkpoints' / '5'))
  np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path)), _prompt(state))  # step 3 now


def test_checkpoint_is_prompt_sized(tmp_path):
  state = _state(100, 768)  # 300 KB of prompt; the smallest frozen T5 is ~300 MB
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, data_position=0)
  sizes = [p.stat().st_size for p in tmp_path.rglob('*') if p.is_file()]
  assert sum(sizes) < 2 * 2**20, sum(sizes)
  assert max(sizes) < 2**20, max(sizes)


def test_export_prompt(tmp_path):
  state = _state(4, 8)
  for i, source in enumerate([state, state.prompt, state.prompt['prompt'].astype(jnp.bfloat16)]):
    path = export_prompt(source, str(tmp_path / f'deep{i}' / 'dir' / 'prompt.npy'))
    loaded = np.load(path, allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.shape == (4, 8)
    np.testing.assert_allclose(loaded, _prompt(state), rtol=1e-2 if i == 2 else 0)
  with pytest.raises(PromptError, match=r'\(2, 4, 8\)'):
    export_prompt(np.zeros((2, 4, 8)), str(tmp_path / 'bad.npy'))
  (tmp_path / 'file.txt').write_text('x')
  with pytest.raises(PromptError, match='file.txt'):
    export_prompt(state, str(tmp_path / 'file.txt' / 'prompt.npy'))


def test_unwritable_model_dir_is_named(tmp_path):
  (tmp_path / 'file.txt').write_text('not a directory')
  model_dir = tmp_path / 'file.txt' / 'run'
  with pytest.raises(CheckpointError, match=re.escape(f'MODEL_DIR {model_dir} is not writable')):
    PromptCheckpointer(str(model_dir))


def test_bad_options_are_named(tmp_path):
  with pytest.raises(ConfigError, match='keep must be >= 1'):
    PromptCheckpointer(str(tmp_path), keep=0)
  with pytest.raises(ConfigError, match="best_mode must be 'max' or 'min', got 'avg'"):
    PromptCheckpointer(str(tmp_path), best_mode='avg')
  with pytest.raises(ConfigError, match='keep_best must be >= 1'):
    PromptCheckpointer(str(tmp_path), best_metric='accuracy', keep_best=0)
  with PromptCheckpointer(str(tmp_path), best_metric='accuracy') as ckpt:
    with pytest.raises(CheckpointError, match=re.escape(f'no checkpoint to restore in {tmp_path / "checkpoints"}')):
      ckpt.restore(_abstract(_state()))
    with pytest.raises(ConfigError, match="best_metric 'accuracy' must be a number"):
      ckpt.save(1, _state(), data_position=0, metrics={'accuracy': 'high'})


def test_prompt_shape_mismatch_names_both_shapes(tmp_path):
  state = _state()
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, data_position=0)
    with pytest.raises(CheckpointError, match=r'checkpoints/1 holds a prompt of shape \(5, 32\).*\(6, 32\)'):
      ckpt.restore(_abstract(_state(6)))
    with pytest.raises(CheckpointError, match=r'no checkpoint for step 9 .*have \[1\]'):
      ckpt.restore(_abstract(state), step=9)
    adam_state = init_train_state(state.prompt, make_optimizer(optimizer=adam), jax.random.key(0))
    with pytest.raises(CheckpointError, match=r'cannot restore checkpoint .*checkpoints/1: .*does not match'):
      ckpt.restore(_abstract(adam_state))


# Reading a damaged checkpoint leaves an unretrieved tensorstore future inside orbax; harmless noise.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_damaged_and_unfinished_checkpoints(tmp_path):
  state = _state()
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, data_position=0)
    ckpt.save(2, state, data_position=0)
  ckpt_dir = tmp_path / 'checkpoints'
  for data_dir in (ckpt_dir / '2' / 'state').rglob('d'):  # the array chunks are gone
    shutil.rmtree(data_dir)
  (ckpt_dir / '5').mkdir()  # a step dir that never got its commit marker
  (ckpt_dir / '7.orbax-checkpoint-tmp-123').mkdir()  # orbax's in-progress dir of an interrupted save
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "2"} is damaged')):
      ckpt.restore(_abstract(state))
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "5"} is incomplete')):
      ckpt.restore(_abstract(state), step=5)
    _assert_bitwise_equal(ckpt.restore(_abstract(state), step=1)[0], state)
    np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path), 1), _prompt(state))
    assert ckpt.save(3, state, data_position=0)  # the stray higher step dir does not block saving
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
  (ckpt_dir / '3' / 'state' / '_METADATA').write_text('{not json')
  with PromptCheckpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "3"} is damaged')):
      ckpt.restore(_abstract(state), step=3)


def _wait_for(predicate, seconds=2.0):
  deadline = time.time() + seconds
  while not predicate() and time.time() < deadline:
    time.sleep(0.01)
  return predicate()


def test_preemption_guard_sigterm_sets_flag_and_restores_handler():
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda *_: calls.append('old'))
  try:
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
      assert guard.mode == 'local' and not guard.should_stop(0)
      os.kill(os.getpid(), signal.SIGTERM)
      assert _wait_for(guard.should_stop)
      assert guard.received_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before and calls == []
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: calls == ['old'])
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_preemption_guard_sigint_is_optional_and_second_one_interrupts():
  before = signal.getsignal(signal.SIGINT)
  with PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGINT) is before  # not handled unless asked
  with pytest.raises(KeyboardInterrupt):
    with PreemptionGuard(sigint=True) as guard:
      os.kill(os.getpid(), signal.SIGINT)
      assert _wait_for(guard.should_stop) and guard.received_signal == signal.SIGINT
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for(lambda: False, 1.0)
  assert signal.getsignal(signal.SIGINT) is before
  with pytest.raises(ConfigError, match='outside its `with` block'):
    PreemptionGuard().should_stop(0)
  with pytest.raises(ConfigError, match="mode must be .* got 'cluster'"):
    PreemptionGuard(mode='cluster')
  with PreemptionGuard(mode='jax') as guard:  # without jax.distributed there is no preemption notice
    assert not guard.should_stop(5)
    with pytest.raises(ConfigError, match='needs the current `step`'):
      guard.should_stop()


_TWO_PROCESS_SCRIPT = '''
import sys
process_id, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id,
                           initialization_timeout=60)
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxprompt.errors import CheckpointError
from jaxprompt.train.checkpoints import PromptCheckpointer, load_prompt_from_checkpoint
from tests.test_checkpointing import _state

mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ('data', 'model'))
host = jax.device_get(_state(6, 8))
# The [6, 8] leaves are split between the two processes (embed over 'data'); everything else is replicated.
def place(x):
  spec = PartitionSpec(None, 'data') if np.shape(x) == (6, 8) else PartitionSpec()
  return jax.make_array_from_callback(np.shape(x), NamedSharding(mesh, spec), lambda index: np.asarray(x)[index])
state = jax.tree.map(place, host)
with PromptCheckpointer(model_dir) as ckpt:
  try:
    ckpt.save(1, jax.tree.map(np.asarray, host), data_position=0)
    raise AssertionError('a host-local state was saved')
  except CheckpointError as e:
    assert 'host-local' in str(e) and 'step' in str(e), e
  assert ckpt.save(4, state, data_position=40 + process_id * 0, metrics={'accuracy': 0.5})
  ckpt.wait_until_finished()
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored, meta = ckpt.restore(template)
assert meta['step'] == 4 and meta['data_position'] == 40
assert restored.prompt['prompt'].sharding == state.prompt['prompt'].sharding
for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(host)):
  got = np.asarray(multihost_utils.process_allgather(got, tiled=True))
  assert got.dtype == want.dtype and got.tobytes() == np.asarray(want).tobytes()
multihost_utils.sync_global_devices('saved')
assert load_prompt_from_checkpoint(model_dir).tobytes() == np.asarray(host.prompt['prompt']).tobytes()

# Preemption: a SIGTERM on process 1 alone must stop both processes at the same step.
import os, signal, time
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
'''


def test_two_processes_save_and_restore_sharded_state(tmp_path):
  script = tmp_path / 'two_process_checkpoint.py'
  script.write_text(_TWO_PROCESS_SCRIPT)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=2', PYTHONPATH=str(REPO))
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path / 'run')], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=120))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0 and out.strip().endswith('OK'), f'{out}\n{err[-4000:]}'
  stops = [[line for line in out.splitlines() if line.startswith('stopped at')] for out, _ in outputs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  assert sorted(p.name for p in (tmp_path / 'run' / 'numpy_checkpoints').iterdir()) == ['checkpoint_4']
