"""What a killed run leaves in MODEL_DIR/checkpoints and how the next start tells it apart: an old step whose
keep-N deletion was cut short (finished), a save that never finished (the temporary dir removed; an uncommitted
step dir left untouched), and orbax's own clean-up thread, which once deleted a later save in progress."""
import asyncio
import logging
import os

import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import temporary_paths

from jaxprompt.train import step_dirs
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import prompt_copy, prompt_state

# Reading a damaged checkpoint leaves an unretrieved tensorstore future inside orbax; harmless noise.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _save(model_dir, steps, keep=3):
  with StateCheckpointer(str(model_dir), keep=keep, numpy_copy=prompt_copy) as ckpt:
    for step in steps:
      assert ckpt.save(step, prompt_state(seed=step, step=step), data_position=step, batch_size=8)


def _files(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_an_interrupted_keep_n_deletion_is_finished_at_the_next_start(tmp_path, caplog, monkeypatch):
  """keep-N renames an old step out of its step's name before deleting it: a run killed in between leaves no
  half step that looks like an interrupted save, and the next start finishes the deletion."""
  with monkeypatch.context() as killed:  # the run dies after the renames, before any deletion
    killed.setattr(step_dirs, 'sweep', lambda parent, idle=True: [])
    _save(tmp_path, [10, 20, 30], keep=1)
  ckpt_trash, numpy_trash = (tmp_path / d / step_dirs.DELETING for d in ('checkpoints', 'numpy_checkpoints'))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['.deleting', '30']
  assert sorted(p.name for p in ckpt_trash.iterdir()) == ['10', '20']
  assert sorted(p.name for p in numpy_trash.iterdir()) == ['checkpoint_10', 'checkpoint_20']
  for marker in step_dirs.COMMIT_MARKERS:  # deletions that got as far as the commit markers, and a numpy copy
    (ckpt_trash / '10' / marker).unlink(missing_ok=True)
  (numpy_trash / 'checkpoint_10' / 'prompt.npy').unlink()
  with caplog.at_level(logging.INFO, logger='jaxprompt'), StateCheckpointer(str(tmp_path), keep=1) as ckpt:
    assert ckpt.all_steps() == [30]
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['30']
  assert sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir()) == ['checkpoint_30']
  for path in (ckpt_trash / '10', ckpt_trash / '20', numpy_trash / 'checkpoint_10', numpy_trash / 'checkpoint_20'):
    assert f'Finished deleting {path}: a run stopped while deleting this old step' in caplog.text
  assert 'incomplete' not in caplog.text and not any(r.levelno >= logging.WARNING for r in caplog.records)


def test_an_uncommitted_step_is_named_for_what_it_can_be_and_left_untouched(tmp_path, caplog):
  """Without the rename (an older release's clean-up, or cloud storage, which deletes in place) an old step
  without its commit marker may be a deletion or a save cut short: it is named so, and never modified; the newest
  step without one is an interrupted save, as before."""
  _save(tmp_path, [10, 20, 30])
  for step in (10, 30):
    for marker in step_dirs.COMMIT_MARKERS:
      (tmp_path / 'checkpoints' / str(step) / marker).unlink(missing_ok=True)
  before = _files(tmp_path)
  with caplog.at_level(logging.WARNING, logger='jaxprompt'), StateCheckpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [20]
  old, newest = (tmp_path / 'checkpoints' / '10', tmp_path / 'checkpoints' / '30')
  assert (f'checkpoint {old} is incomplete (no commit_success.txt or _CHECKPOINT_METADATA) although the later step '
          '20 is complete: its save or its deletion was interrupted; delete it or move it away') in caplog.text
  assert f'checkpoint {newest} is incomplete (no commit_success.txt or _CHECKPOINT_METADATA): a save was ' \
      'interrupted' in caplog.text
  assert _files(tmp_path) == before


def test_an_unfinished_saves_temporary_dir_is_removed_before_any_save(tmp_path, monkeypatch):
  """orbax removes such dirs in a thread that only a save waits for: a checkpointer that never saved left it
  running, and under load it deleted the next checkpointer's save in progress (FileNotFoundError on
  `10.orbax-checkpoint-tmp/_CHECKPOINT_METADATA`). Here that thread is made late on purpose; the dirs are removed
  when a checkpointer starts instead."""
  real = temporary_paths.cleanup_temporary_paths
  suffix = ocp.path.step.TMP_DIR_SUFFIX
  calls = []

  async def late(directory, **kwargs):  # the first checkpointer's runs once a later save of step 10 is written
    calls.append(directory)
    for _ in range(2000 if len(calls) == 1 else 0):
      if any(name.startswith('10' + suffix) for name in os.listdir(directory)):
        break
      await asyncio.sleep(0.001)
    return await real(directory, **kwargs)

  monkeypatch.setattr(temporary_paths, 'cleanup_temporary_paths', late)
  with StateCheckpointer(str(tmp_path)) as ckpt:  # never saves
    assert ckpt.all_steps() == []
  _save(tmp_path, [10, 20])  # another checkpointer's saves, while the first one's clean-up would run
  leftover = tmp_path / 'checkpoints' / f'30{suffix}'  # what a run killed while saving step 30 left
  (leftover / 'state').mkdir(parents=True)
  with StateCheckpointer(str(tmp_path)) as ckpt:
    assert not leftover.exists()
    assert ckpt.all_steps() == [10, 20]
