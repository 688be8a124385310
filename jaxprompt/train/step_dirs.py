"""Where a training run keeps its checkpoint steps, which of them finished saving, and how old ones are deleted.

  MODEL_DIR/checkpoints/<step>/                    orbax (committed once a marker below exists)
  MODEL_DIR/numpy_checkpoints/checkpoint_<step>/   the method's numpy copies of that step
  .../.deleting/<name>/                            an old step being deleted (keep-N clean-up)

On a local disk an old step is first renamed into `.deleting/` (one atomic rename; orbax's retention does the
same through `todelete_subdir`), then deleted: a run killed meanwhile never leaves half a step under a step's
name, and `sweep` finishes the deletion at the next start. Cloud storage has no atomic rename: there a step is
deleted in place.
"""
from __future__ import annotations

import logging

from etils import epath

log = logging.getLogger('jaxprompt')

CHECKPOINTS = 'checkpoints'
NUMPY_CHECKPOINTS = 'numpy_checkpoints'
NUMPY_PREFIX = 'checkpoint_'
DELETING = '.deleting'
# orbax writes these only once a step is complete; a step dir with neither is a save that never finished.
COMMIT_MARKERS = ('commit_success.txt', '_CHECKPOINT_METADATA')
INCOMPLETE = ('checkpoint {} is incomplete (no commit_success.txt or _CHECKPOINT_METADATA): a save was '
              'interrupted; move it away or restore another step')
# Older than a complete step: its save, or its deletion by an older release or on cloud storage, was interrupted.
INCOMPLETE_OLD = ('checkpoint {} is incomplete (no commit_success.txt or _CHECKPOINT_METADATA) although the later '
                  'step {} is complete: its save or its deletion was interrupted; delete it or move it away')


def parse_step(name: str, prefix: str = '') -> int | None:
  """The step of a dir named `<prefix><digits>`, else None."""
  rest = name[len(prefix):] if name.startswith(prefix) else None
  return int(rest) if rest and rest.isdigit() else None


def step_numbers(ckpt_dir: epath.Path) -> list[int]:
  """The steps of every `<digits>` dir under `ckpt_dir`, committed or not, ascending."""
  steps = [parse_step(p.name) for p in ckpt_dir.iterdir()] if ckpt_dir.is_dir() else []
  return sorted(s for s in steps if s is not None)


def is_committed(step_dir: epath.Path) -> bool:
  return any((step_dir / marker).exists() for marker in COMMIT_MARKERS)


def committed_steps(ckpt_dir: epath.Path) -> list[int]:
  """The steps under `ckpt_dir` whose save finished, ascending."""
  return [s for s in step_numbers(ckpt_dir) if is_committed(ckpt_dir / str(s))]


def renames_atomically(path: epath.Path) -> bool:
  """A local path (renaming a dir is one step); gs:// and other object stores copy, then delete."""
  return '://' not in str(path)


def remove(step_dir: epath.Path) -> None:
  """Deletes an old step dir (module docstring): renamed into `.deleting/` first on a local disk."""
  if renames_atomically(step_dir):
    trash = step_dir.parent / DELETING
    trash.mkdir(exist_ok=True)
    (trash / step_dir.name).rmtree(missing_ok=True)  # what an earlier failed removal left: trash already
    step_dir.rename(trash / step_dir.name)
    sweep(step_dir.parent)
  else:
    step_dir.rmtree()


def sweep(parent: epath.Path, idle: bool = True) -> list[epath.Path]:
  """Deletes every old step renamed into `parent/.deleting/` (by `remove` or orbax's retention); returns them.
  `idle`: nothing is renaming a step in meanwhile, so the emptied `.deleting` dir goes too. A failure is a
  warning: the next sweep tries again, and no step of the run is involved."""
  trash = parent / DELETING
  done = []
  try:
    for path in list(trash.iterdir()) if trash.is_dir() else ():
      if path.is_dir():
        path.rmtree()
      else:
        path.unlink()
      done.append(path)
    if idle and trash.is_dir():
      trash.rmdir()
  except OSError as e:
    log.warning('Could not finish deleting old checkpoints in %s: %s', trash, e)
  return done


def unfinished_saves(ckpt_dir: epath.Path) -> list[epath.Path]:
  """orbax's temporary dirs of saves that never finished (`<step>.orbax-checkpoint-tmp...`, local disks only)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (eval / infer / export read steps without it)
  suffix = ocp.path.step.TMP_DIR_SUFFIX
  return [p for p in ckpt_dir.iterdir() if suffix in p.name] if ckpt_dir.is_dir() else []
