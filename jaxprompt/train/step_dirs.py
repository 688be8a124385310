"""Where a training run keeps its checkpoint steps, and which of them finished saving.

  MODEL_DIR/checkpoints/<step>/                    orbax (committed once a marker below exists)
  MODEL_DIR/numpy_checkpoints/checkpoint_<step>/   the method's numpy copies of that step
"""
from __future__ import annotations

from etils import epath

CHECKPOINTS = 'checkpoints'
NUMPY_CHECKPOINTS = 'numpy_checkpoints'
NUMPY_PREFIX = 'checkpoint_'
# orbax writes these only once a step is complete; a step dir with neither is a save that never finished.
COMMIT_MARKERS = ('commit_success.txt', '_CHECKPOINT_METADATA')
INCOMPLETE = ('checkpoint {} is incomplete (no commit_success.txt or _CHECKPOINT_METADATA): a save was '
              'interrupted; move it away or restore another step')


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
