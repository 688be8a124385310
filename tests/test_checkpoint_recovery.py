"""Resuming from damaged checkpoints, batch-size changes, the previous release's layout, numpy copies, npy_io."""
import gc
import logging
import pickle
import re
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxprompt.errors import CheckpointError, ConfigError, PromptError, TrainingError
from jaxprompt.formats import npy_io
from jaxprompt.runtime import finite
from jaxprompt.runtime.state import TrainState, init_train_state
from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import assert_trees_equal, prompt_copy, prompt_state

_TX = optax.adafactor(1e-2)

# Reading a damaged checkpoint leaves an unretrieved tensorstore future inside orbax; harmless noise.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(autouse=True, scope='module')
def _collect_orbax_futures():
  """Frees those futures once this module's tests are done, where the noise is filtered, rather than in whichever
  test runs next (once per module: a full collection of this heap takes ~1.5 s)."""
  yield
  gc.collect()


def _state(step: int, length: int = 4, embed: int = 8) -> TrainState:
  """A tiny prompt TrainState after one update; `step` also seeds the values, so steps differ."""
  return prompt_state(length, embed, seed=step, step=step)


def _template(length: int = 4, embed: int = 8) -> TrainState:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0, length, embed))


def _files(root):
  """{relative path: bytes} of every file under `root`: what must survive untouched."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _save(model_dir, steps):
  with StateCheckpointer(str(model_dir), best_metric='accuracy', numpy_copy=prompt_copy) as ckpt:
    for step in steps:
      assert ckpt.save(step, _state(step), data_position=step * 3, batch_size=8, metrics={'accuracy': step / 100})


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


# Every way a step was found damaged: data, array or tree metadata, meta, metrics, commit marker.
_DAMAGE = {
    'truncated_data': lambda d: [_truncate(p) for p in (d / 'state').rglob('*') if p.parent.name == 'd'],
    'deleted_manifest': lambda d: (d / 'state' / 'manifest.ocdbt').unlink(),
    'truncated_array_metadata': lambda d: _truncate(d / 'state' / 'array_metadatas' / 'process_0'),
    'garbled_tree_metadata': lambda d: (d / 'state' / '_METADATA').write_text('{not json'),
    'garbled_meta': lambda d: (d / 'meta' / 'metadata').write_text('{not json'),
    'garbled_metrics': lambda d: (d / 'metrics' / 'metrics').write_text('{not json'),
    'deleted_state': lambda d: shutil.rmtree(d / 'state'),
    'no_commit_marker': lambda d: [(d / m).unlink() for m in ('commit_success.txt', '_CHECKPOINT_METADATA')],
}


@pytest.mark.parametrize('damage', sorted(_DAMAGE))
def test_damaged_latest_step_falls_back_and_is_left_untouched(tmp_path, caplog, damage):
  _save(tmp_path, [10, 20])
  damaged_dir = tmp_path / 'checkpoints' / '20'
  _DAMAGE[damage](damaged_dir)
  before = _files(damaged_dir)
  numpy_before = _files(tmp_path / 'numpy_checkpoints' / 'checkpoint_20')
  with caplog.at_level(logging.WARNING, logger='jaxprompt'):
    with StateCheckpointer(str(tmp_path), keep=1, best_metric='accuracy', numpy_copy=prompt_copy) as ckpt:
      with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {damaged_dir} is')):
        ckpt.restore(_template(), step=20)  # an explicit step is never swapped for another
      state, meta = ckpt.restore_latest(_template(), batch_size=8)
      assert_trees_equal(state, _state(10))
      assert meta == {'step': 10, 'data_position': 30, 'batch_size': 8, 'metrics': {'accuracy': 0.1}}
      assert ckpt.all_steps() == [10]
      resumed = [
          r.message for r in caplog.records if r.levelno == logging.WARNING and 'Resuming from step 10' in r.message
      ]
      assert len(resumed) == 1 and str(damaged_dir) in resumed[0]
      # Training goes on: step 20 cannot be written over the damaged dir, later steps are, and retention
      # (keep=1) deletes intact steps but never the damaged one or its numpy copy.
      caplog.clear()
      assert not ckpt.save(20, _state(20), data_position=60, batch_size=8)
      assert f'Not saving step 20: {damaged_dir} holds a damaged checkpoint' in caplog.text
      for step, accuracy in [(30, 0.05), (40, 0.01)]:
        assert ckpt.save(step, _state(step), data_position=step * 3, batch_size=8, metrics={'accuracy': accuracy})
      ckpt.wait_until_finished()
      assert ckpt.all_steps() == [10, 40]  # 40 the newest, 10 the best
  assert _files(damaged_dir) == before
  assert _files(tmp_path / 'numpy_checkpoints' / 'checkpoint_20') == numpy_before
  assert sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir()) == [
      'checkpoint_10', 'checkpoint_20', 'checkpoint_40'
  ]
  # A restarted job resumes from 40 (newer than the damaged step: nothing to warn about).
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='jaxprompt'), StateCheckpointer(str(tmp_path), keep=1) as ckpt:
    state, meta = ckpt.restore_latest(_template(), batch_size=8)
  assert meta['step'] == 40 and 'Resuming from' not in caplog.text
  assert_trees_equal(state, _state(40))


def test_no_readable_step_is_one_checkpoint_error(tmp_path):
  with StateCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.restore_latest(_template(), batch_size=8) is None  # nothing saved: start afresh
  _save(tmp_path, [10, 20])
  _DAMAGE['truncated_data'](tmp_path / 'checkpoints' / '10')
  _DAMAGE['garbled_metrics'](tmp_path / 'checkpoints' / '20')
  before = _files(tmp_path)
  with StateCheckpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError) as error:
      ckpt.restore_latest(_template(), batch_size=8)
    assert ckpt.all_steps() == []
  message = str(error.value)
  assert '\n' not in message and message.startswith(f'no readable checkpoint in {tmp_path / "checkpoints"}')
  assert f'checkpoint {tmp_path / "checkpoints" / "20"} is damaged' in message
  assert f'checkpoint {tmp_path / "checkpoints" / "10"} is damaged' in message
  assert _files(tmp_path) == before


def test_template_mismatch_is_not_taken_for_damage(tmp_path):
  _save(tmp_path, [10, 20])
  with StateCheckpointer(str(tmp_path)) as ckpt:
    # A changed prompt length must be reported, not skipped over to an older (equally mismatched) step.
    with pytest.raises(
        CheckpointError, match=r'checkpoints/20: it does not match the template .*: '
        r'trainable/prompt is \(4, 8\) there and \(5, 8\) in the template'):
      ckpt.restore_latest(_template(5), batch_size=8)
    sgd = init_train_state({'prompt': jnp.zeros((4, 8))}, optax.sgd(0.1), jax.random.key(0))
    with pytest.raises(
        CheckpointError, match=r'checkpoints/20: it does not match the template .*: '
        r'opt_state/0/count is \(\) there and absent in the template'):
      ckpt.restore_latest(sgd, batch_size=8)
    assert ckpt.all_steps() == [10, 20]


def test_batch_size_change_is_refused(tmp_path):
  _save(tmp_path, [10])
  with StateCheckpointer(str(tmp_path)) as ckpt:
    message = (f'MODEL_DIR {tmp_path} was trained with BATCH_SIZE=8 (step 10) but this run has BATCH_SIZE=16: '
               'saved data position counts batches of 8 examples; resume with --gin.BATCH_SIZE=8 or start a new '
               'MODEL_DIR')
    with pytest.raises(ConfigError, match=re.escape(message)):
      ckpt.restore_latest(_template(), batch_size=16)
    assert ckpt.restore_latest(_template(), batch_size=8)[1]['batch_size'] == 8
    # A checkpoint that recorded no batch size (older release) resumes with any.
    assert ckpt.save(20, _state(20), data_position=60)
    ckpt.wait_until_finished()
    assert ckpt.restore_latest(_template(), batch_size=16)[1] == {
        'step': 20, 'data_position': 60, 'batch_size': None, 'metrics': None
    }


def test_a_state_holding_inf_is_never_saved_nor_resumed_from(tmp_path, caplog, monkeypatch):
  _save(tmp_path, [10])
  good = _state(20)
  bad = good.replace(trainable={'prompt': good.trainable['prompt'].at[0, 0].set(jnp.inf)})
  with StateCheckpointer(str(tmp_path), numpy_copy=prompt_copy) as ckpt:
    with pytest.raises(
        TrainingError, match=r'not saving step 20 in .*: NaN/inf in trainable/prompt; the last finite '
        'checkpoint, step 10, is kept'):
      ckpt.save(20, bad, data_position=60, batch_size=8)
    assert ckpt.all_steps() == [10]
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10']
  assert sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir()) == ['checkpoint_10']
  # A step an older release saved with inf in it is passed over like a damaged one, and left as it was.
  with monkeypatch.context() as older_release:
    older_release.setattr(finite, 'non_finite_leaves', lambda tree: [])
    with StateCheckpointer(str(tmp_path)) as ckpt:
      assert ckpt.save(20, bad, data_position=60, batch_size=8)
  before = _files(tmp_path)
  with caplog.at_level(logging.WARNING, logger='jaxprompt'), StateCheckpointer(str(tmp_path)) as ckpt:
    state, meta = ckpt.restore_latest(_template(), batch_size=8)
  assert meta['step'] == 10
  assert_trees_equal(state, _state(10))
  assert f'checkpoint {tmp_path / "checkpoints" / "20"} holds NaN/inf in trainable/prompt' in caplog.text
  assert _files(tmp_path) == before


@flax.struct.dataclass
class _PreviousReleaseState:
  """The previous release's jaxprompt.runtime.step.TrainState."""
  step: jax.Array
  prompt: dict
  opt_state: object
  rng: jax.Array


def test_previous_release_layout_is_read(tmp_path):
  new = _state(5)
  old = _PreviousReleaseState(step=new.step, prompt=new.trainable, opt_state=new.opt_state, rng=new.rng)
  with ocp.CheckpointManager(
      tmp_path / 'checkpoints', options=ocp.CheckpointManagerOptions(create=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}) as manager:
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                            meta=ocp.args.JsonSave({'step': 5, 'data_position': 15,
                                                                    'metrics': None})))  # no batch size then
  prompt = np.asarray(new.trainable['prompt'])
  for where in (tmp_path, tmp_path / 'checkpoints', tmp_path / 'checkpoints' / '5'):
    np.testing.assert_array_equal(load_prompt_from_checkpoint(str(where)), prompt)
  with StateCheckpointer(str(tmp_path)) as ckpt:
    state, meta = ckpt.restore_latest(_template(), batch_size=32)
  assert_trees_equal(state, new)
  assert isinstance(state, TrainState)
  assert meta == {'step': 5, 'data_position': 15, 'batch_size': None, 'metrics': None}


def test_load_prompt_names_a_damaged_step_and_a_promptless_one(tmp_path):
  _save(tmp_path, [10, 20])
  shutil.rmtree(tmp_path / 'numpy_checkpoints')  # read from orbax
  _DAMAGE['deleted_manifest'](tmp_path / 'checkpoints' / '20')
  with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {tmp_path / "checkpoints" / "20"} is damaged')):
    load_prompt_from_checkpoint(str(tmp_path))
  np.testing.assert_array_equal(load_prompt_from_checkpoint(str(tmp_path), 10), _state(10).trainable['prompt'])
  with StateCheckpointer(str(tmp_path / 'model')) as ckpt:  # model tuning: the whole network, no prompt
    ckpt.save(1, init_train_state({'dense': jnp.ones((2, 2))}, _TX, jax.random.key(0)), data_position=0)
  with pytest.raises(CheckpointError, match=r'checkpoints/1 holds no prompt .*not written by prompt tuning'):
    load_prompt_from_checkpoint(str(tmp_path / 'model'))


def test_numpy_copies_come_from_numpy_copy(tmp_path):
  state = _state(1)
  with StateCheckpointer(str(tmp_path / 'none')) as ckpt:  # model tuning: no numpy copies
    assert ckpt.save(1, state, data_position=0)
  assert not (tmp_path / 'none' / 'numpy_checkpoints').exists()
  with StateCheckpointer(str(tmp_path / 'prompt')) as ckpt:
    ckpt.numpy_copy = lambda s: None  # a method without files
    assert ckpt.save(1, state, data_position=0)
    ckpt.numpy_copy = lambda s: {**prompt_copy(s), 'scale.npy': np.float32(2) * np.ones(3, np.float32)}
    assert ckpt.save(2, state, data_position=0)
  step_dir = tmp_path / 'prompt' / 'numpy_checkpoints' / 'checkpoint_2'
  assert sorted(p.name for p in (tmp_path / 'prompt' / 'numpy_checkpoints').iterdir()) == ['checkpoint_2']
  assert sorted(p.name for p in step_dir.iterdir()) == ['prompt.npy', 'scale.npy']
  np.testing.assert_array_equal(np.load(step_dir / 'prompt.npy'), np.asarray(state.trainable['prompt']))
  np.testing.assert_array_equal(np.load(step_dir / 'scale.npy'), [2, 2, 2])


def test_npy_io_round_trip_local_and_gfile(tmp_path):
  array = np.arange(12, dtype=np.float32).reshape(3, 4)
  for path in (str(tmp_path / 'new' / 'deeper' / 'a.npy'), 'ram://npy_io/a.npy'):
    assert npy_io.write_npy(array, path) == path
    assert npy_io.write_npy(array * 2, path) == path  # replaces the file whole
    got = npy_io.read_npy(path)
    assert got.dtype == np.float32 and got.tobytes() == (array * 2).tobytes()
    assert npy_io.npy_shape(path) == (3, 4)
  assert [p.name for p in (tmp_path / 'new' / 'deeper').iterdir()] == ['a.npy']  # no temp files left
  (tmp_path / 'file').write_text('x')
  with pytest.raises(CheckpointError, match=r'cannot write numpy copy .*file/b\.npy'):
    npy_io.write_npy(array, str(tmp_path / 'file' / 'b.npy'), what='numpy copy', error=CheckpointError)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_npy_io_never_unpickles(tmp_path):
  marker = tmp_path / 'unpickled'

  class Bomb:

    def __reduce__(self):
      return (open, (str(marker), 'w'))

  np.save(tmp_path / 'obj.npy', np.array([Bomb()], dtype=object), allow_pickle=True)
  with pytest.raises(PromptError, match=r'cannot load prompt file .*obj\.npy without unpickling'):
    npy_io.read_npy(tmp_path / 'obj.npy')
  (tmp_path / 'raw.npy').write_bytes(pickle.dumps(Bomb()))
  for read in (npy_io.read_npy, npy_io.npy_shape):
    with pytest.raises(CheckpointError, match=r'raw\.npy is not a \.npy file'):
      read(tmp_path / 'raw.npy', error=CheckpointError)
  assert not marker.exists()
  with pytest.raises(PromptError, match=r'cannot write prompt file .*o\.npy: .*pickle'):
    npy_io.write_npy(np.array([object()], dtype=object), tmp_path / 'o.npy')
  assert not (tmp_path / 'o.npy').exists()


def test_npy_shape_reads_only_the_header(tmp_path):
  path = tmp_path / 'big.npy'
  np.save(path, np.zeros((1000, 64), np.float32))
  header_only = tmp_path / 'header_only.npy'
  header_only.write_bytes(path.read_bytes()[:200])  # the data is gone, the header is whole
  assert npy_io.npy_shape(header_only) == (1000, 64)
  with pytest.raises(PromptError, match=r'header_only\.npy without unpickling or it is damaged'):
    npy_io.read_npy(header_only)
  np.save(tmp_path / 'obj.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  assert npy_io.npy_shape(tmp_path / 'obj.npy') == (1,)  # the header holds no pickle
  (tmp_path / 'cut.npy').write_bytes(path.read_bytes()[:20])
  with pytest.raises(PromptError, match=r'prompt file .*cut\.npy has an unreadable \.npy header'):
    npy_io.npy_shape(tmp_path / 'cut.npy')
  with pytest.raises(PromptError, match=r'prompt file .*nope\.npy does not exist'):
    npy_io.npy_shape(tmp_path / 'nope.npy')
  np.savez(tmp_path / 'p.npz', a=np.zeros(2))
  with pytest.raises(PromptError, match=r'p\.npz is an \.npz archive'):
    npy_io.npy_shape(tmp_path / 'p.npz')
