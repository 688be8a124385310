"""Reading one orbax step dir without a checkpoint manager: whether it can be restored, the shapes its tree was
saved with, and (for eval / export) its prompt leaf alone. `Damaged` is a step that exists but cannot be read;
`checkpoints.StateCheckpointer.restore_latest` falls back past it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxprompt.errors import CheckpointError
from jaxprompt.formats.keys import PROMPT_KEY
from jaxprompt.train import step_dirs


class Damaged(CheckpointError):
  """A step that exists but cannot be read."""


def one_line(error: Exception) -> str:
  """An orbax/tensorstore error as one short line: the CLI prints errors as one line."""
  return ' '.join(f'{type(error).__name__}: {error}'.split())[:400]


def scan_unreadable(ckpt_dir: epath.Path) -> dict[int, str]:
  """Step dirs orbax must not see: uncommitted, or with metrics that would stop its manager from starting."""
  found = {}
  steps = step_dirs.step_numbers(ckpt_dir)
  committed = [s for s in steps if step_dirs.is_committed(ckpt_dir / str(s))]
  for step in steps:
    step_dir = ckpt_dir / str(step)
    try:
      if step not in committed:
        later = [s for s in committed if s > step]
        found[step] = (step_dirs.INCOMPLETE_OLD.format(step_dir, later[-1])
                       if later else step_dirs.INCOMPLETE.format(step_dir))
      elif (step_dir / 'metrics').exists():
        ocp.JsonCheckpointHandler(filename='metrics').restore(step_dir / 'metrics')
    except FileNotFoundError:  # orbax reads a missing file as no metrics
      pass
    except Exception as e:  # pylint: disable=broad-except
      found[step] = f'checkpoint {step_dir} is damaged: cannot read its metrics: {one_line(e)}'
  return found


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'opt_state/0/count': shape, ...} of every leaf (orbax's metadata and templates name paths alike)."""
  return {
      jax.tree_util.keystr(path, simple=True, separator='/'): tuple(int(d) for d in x.shape)
      for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def saved_shapes(step_dir: epath.Path) -> dict[str, tuple[int, ...]]:
  try:
    return leaf_shapes(ocp.StandardCheckpointHandler().metadata(step_dir / 'state'))
  except Exception as e:  # missing or unreadable _METADATA, or array metadata tensorstore cannot open
    raise Damaged(f'checkpoint {step_dir} is damaged: cannot read the metadata of {step_dir / "state"}: '
                  f'{one_line(e)}') from e


def check_shapes(step_dir: epath.Path, saved: Mapping[str, tuple[int, ...]], target: Any) -> None:
  """Names the first leaf (template order: the trainable tree before the optimizer's) saved differently."""
  wanted = leaf_shapes(target)
  for path in [*wanted, *saved]:
    if saved.get(path) != wanted.get(path):
      there, here = ('absent' if s is None else s for s in (saved.get(path), wanted.get(path)))
      raise CheckpointError(f'cannot restore checkpoint {step_dir}: it does not match the template (optimizer '
                            f'or method changed?): {path} is {there} there and {here} in the template')


def read_prompt(step_dir: epath.Path) -> np.ndarray:
  """Reads only the prompt leaf of an orbax step, from either release's tree (chosen by the metadata)."""
  if not step_dirs.is_committed(step_dir):
    raise Damaged(step_dirs.INCOMPLETE.format(step_dir))
  # New checkpoints: TrainState.trainable[PROMPT_KEY]; the previous release's: TrainState.prompt[PROMPT_KEY].
  root = next((r for r in ('trainable', 'prompt') if f'{r}/{PROMPT_KEY}' in saved_shapes(step_dir)), None)
  if root is None:
    raise CheckpointError(f'checkpoint {step_dir} holds no prompt (no trainable/prompt or prompt/prompt): it '
                          'was not written by prompt tuning')
  try:
    tree = ocp.PyTreeCheckpointer().restore(
        step_dir / 'state', args=ocp.args.PyTreeRestore(
            item={root: {PROMPT_KEY: 0}}, restore_args={root: {PROMPT_KEY: ocp.RestoreArgs(restore_type=np.ndarray)}},
            partial_restore=True))
  except Exception as e:
    raise Damaged(f'cannot read the prompt from checkpoint {step_dir}: {one_line(e)}') from e
  return np.asarray(tree[root][PROMPT_KEY], np.float32)
