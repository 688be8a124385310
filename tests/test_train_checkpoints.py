"""Training checkpoints (orbax) of the one TrainState: round trips, retention, numpy copies, damaged steps, two
processes saving one sharded state."""
import re
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.runtime.optim import adam, make_optimizer
from jaxprompt.runtime.state import TrainState, init_train_state
from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import REPO, assert_trees_equal, prompt_copy, prompt_state, subprocess_env


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _prompt(state):
  return np.asarray(state.trainable['prompt'])


def test_roundtrip_is_bitwise_onto_abstract_and_concrete_templates(tmp_path):
  state = prompt_state()
  with StateCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert ckpt.save(7, state, data_position=1234, batch_size=16,
                     metrics={'loss': np.float32(2.5), 'accuracy': jnp.asarray(0.75)})
    assert not ckpt.save(7, state, data_position=1234, batch_size=16)  # the step exists already
    ckpt.wait_until_finished()
    assert np.count_nonzero(np.asarray(state.opt_state[0].v['prompt'])) > 0
    restored, meta = ckpt.restore(_abstract(state))
    assert_trees_equal(restored, state)
    assert isinstance(restored, TrainState)
    assert meta == {'step': 7, 'data_position': 1234, 'batch_size': 16, 'metrics': {'loss': 2.5, 'accuracy': 0.75}}
  # A fresh checkpointer (a restarted job) restores onto concrete arrays too.
  template = jax.tree.map(jnp.zeros_like, state)
  with StateCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 7
    restored, meta = ckpt.restore(template, step=7)
  assert_trees_equal(restored, state)
  assert meta['data_position'] == 1234 and meta['batch_size'] == 16


def test_keeps_latest_n_and_best_and_prunes_numpy_copies(tmp_path):
  state = prompt_state()
  history = [(10, {'accuracy': 0.3}), (20, {'loss': 1.0}), (30, {'accuracy': 0.9}), (40, {'accuracy': 0.1}), (50, None),
             (60, {'accuracy': 0.5})]
  with StateCheckpointer(str(tmp_path), keep=2, best_metric='accuracy', keep_best=1, numpy_copy=prompt_copy) as ckpt:
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
  with StateCheckpointer(str(tmp_path), keep=2, best_metric='accuracy', keep_best=1) as ckpt:
    assert ckpt.all_steps() == [30, 50, 60] and ckpt.best_step() == 30
    assert ckpt.restore(_abstract(state), step=30)[1]['metrics'] == {'accuracy': 0.9}


def test_best_mode_min_and_plain_latest_n(tmp_path):
  state = prompt_state()
  with StateCheckpointer(str(tmp_path / 'min'), keep=1, best_metric='loss', best_mode='min') as ckpt:
    for step, loss in [(1, 2.0), (2, 1.0), (3, 3.0), (4, None)]:
      ckpt.save(step, state, data_position=0, metrics=None if loss is None else {'loss': loss})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
  with StateCheckpointer(str(tmp_path / 'plain'), keep=2) as ckpt:  # no numpy_copy: no numpy copies
    for step in range(1, 5):
      ckpt.save(step, state, data_position=0, metrics={'accuracy': float(step)})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None
    assert not ckpt.save(2, state, data_position=0)  # not after the latest step
  assert not (tmp_path / 'plain' / 'numpy_checkpoints').exists()


def test_numpy_copy_is_float32_prompt_and_load_prompt_finds_it(tmp_path):
  state = prompt_state(6, 16)
  with StateCheckpointer(str(tmp_path), numpy_copy=prompt_copy) as ckpt:
    ckpt.save(3, state, data_position=0)
    ckpt.save(5, state.replace(trainable={'prompt': state.trainable['prompt'] * 2}), data_position=0)
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
  with pytest.raises(CheckpointError, match='no checkpoints in .*empty'):
    load_prompt_from_checkpoint(str(tmp_path / 'empty'))
  (tmp_path / 'broken.npy').write_bytes(b'not numpy')
  with pytest.raises(CheckpointError, match=r'prompt file .*broken\.npy is not a \.npy file'):
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
  state = prompt_state(100, 768)  # 300 KB of prompt; the smallest frozen T5 is ~300 MB
  with StateCheckpointer(str(tmp_path), numpy_copy=prompt_copy) as ckpt:
    ckpt.save(1, state, data_position=0)
  sizes = [p.stat().st_size for p in tmp_path.rglob('*') if p.is_file()]
  assert sum(sizes) < 2 * 2**20, sum(sizes)
  assert max(sizes) < 2**20, max(sizes)


def test_unwritable_model_dir_is_named(tmp_path):
  (tmp_path / 'file.txt').write_text('not a directory')
  model_dir = tmp_path / 'file.txt' / 'run'
  with pytest.raises(CheckpointError, match=re.escape(f'MODEL_DIR {model_dir} is not writable')):
    StateCheckpointer(str(model_dir))


def test_bad_options_are_named(tmp_path):
  with pytest.raises(ConfigError, match='keep must be >= 1'):
    StateCheckpointer(str(tmp_path), keep=0)
  with pytest.raises(ConfigError, match="best_mode must be 'max' or 'min', got 'avg'"):
    StateCheckpointer(str(tmp_path), best_mode='avg')
  with pytest.raises(ConfigError, match='keep_best must be >= 1'):
    StateCheckpointer(str(tmp_path), best_metric='accuracy', keep_best=0)
  with StateCheckpointer(str(tmp_path), best_metric='accuracy') as ckpt:
    with pytest.raises(CheckpointError, match=re.escape(f'no checkpoint to restore in {tmp_path / "checkpoints"}')):
      ckpt.restore(_abstract(prompt_state()))
    with pytest.raises(ConfigError, match="best_metric 'accuracy' must be a number"):
      ckpt.save(1, prompt_state(), data_position=0, metrics={'accuracy': 'high'})


def test_prompt_shape_mismatch_names_both_shapes(tmp_path):
  state = prompt_state()
  with StateCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, data_position=0)
    with pytest.raises(
        CheckpointError, match=r'checkpoints/1: it does not match the template .*: trainable/'
        r'prompt is \(5, 32\) there and \(6, 32\) in the template'):
      ckpt.restore(_abstract(prompt_state(6)))
    with pytest.raises(CheckpointError, match=r'no checkpoint for step 9 .*have \[1\]'):
      ckpt.restore(_abstract(state), step=9)
    adam_state = init_train_state(state.trainable, make_optimizer(optimizer=adam).tx, jax.random.key(0))
    with pytest.raises(CheckpointError, match=r'cannot restore checkpoint .*checkpoints/1: .*does not match'):
      ckpt.restore(_abstract(adam_state))


# Reading a damaged checkpoint leaves an unretrieved tensorstore future inside orbax; harmless noise.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_damaged_and_unfinished_checkpoints(tmp_path):
  state = prompt_state()
  with StateCheckpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, data_position=0)
    ckpt.save(2, state, data_position=0)
  ckpt_dir = tmp_path / 'checkpoints'
  for data_dir in (ckpt_dir / '2' / 'state').rglob('d'):  # the array chunks are gone
    shutil.rmtree(data_dir)
  (ckpt_dir / '5').mkdir()  # a step dir that never got its commit marker
  (ckpt_dir / '7.orbax-checkpoint-tmp-123').mkdir()  # orbax's in-progress dir of an interrupted save
  with StateCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "2"} is damaged')):
      ckpt.restore(_abstract(state))
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "5"} is incomplete')):
      ckpt.restore(_abstract(state), step=5)
    assert_trees_equal(ckpt.restore(_abstract(state), step=1)[0], state)
    np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path), 1), _prompt(state))
    assert ckpt.save(3, state, data_position=0)  # the stray higher step dir does not block saving
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
  (ckpt_dir / '3' / 'state' / '_METADATA').write_text('{not json')
  with StateCheckpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {ckpt_dir / "3"} is damaged')):
      ckpt.restore(_abstract(state), step=3)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_save_and_restore_shardedprompt_state(tmp_path):
  script = REPO / 'tests' / 'scripts' / 'two_process_checkpoint.py'
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = subprocess_env(2)
  procs = [
      subprocess.Popen([sys.executable, str(script),
                        str(i), str(port), str(tmp_path / 'run')], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) for i in range(2)
  ]
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
