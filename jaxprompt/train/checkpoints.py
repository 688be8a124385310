"""Prompt-only training checkpoints: the `TrainState` (prompt, optimizer state, step, rng) and the data
position, never the frozen model.

Layout under MODEL_DIR:
  checkpoints/<step>/{state,meta,metrics}/            orbax, written atomically (tmp dir + rename / commit file)
  numpy_checkpoints/checkpoint_<step>/prompt.npy      float32 [P, d] copy of the prompt (process 0 only)

The reference writes a full multi-GB T5X checkpoint per save; everything here is prompt-sized (kilobytes).

Multi-host: saving and restoring are collective, so every process calls `save`/`restore` with the same
arguments. Every leaf of the saved state must be a global `jax.Array` (place it with
`ShardedSteps.place_state`): a host-local scalar such as `jnp.zeros(())` cannot be saved by several
processes, and `save` rejects it by name.
"""
from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxprompt.errors import CheckpointError, ConfigError, PromptError
from jaxprompt.train.step import TrainState

CHECKPOINTS = 'checkpoints'
NUMPY_CHECKPOINTS = 'numpy_checkpoints'
PROMPT_FILE = 'prompt.npy'
_NUMPY_PREFIX = 'checkpoint_'
# orbax writes these only once a step is complete; a step dir with neither is a save that never finished.
_COMMIT_MARKERS = ('commit_success.txt', '_CHECKPOINT_METADATA')


class PromptCheckpointer:
  """Saves and restores `TrainState`s under `model_dir`, keeping the `keep` newest steps plus the `keep_best`
  best by `best_metric` (read from the `metrics` passed to `save`; `best_mode` 'max' or 'min')."""

  def __init__(self, model_dir: str, *, keep: int = 3, best_metric: str | None = None, best_mode: str = 'max',
               keep_best: int = 1, save_numpy: bool = True):
    if keep < 1:
      raise ConfigError(f'PromptCheckpointer keep must be >= 1, got {keep}')
    if best_mode not in ('max', 'min'):
      raise ConfigError(f"PromptCheckpointer best_mode must be 'max' or 'min', got {best_mode!r}")
    if best_metric is not None and keep_best < 1:
      raise ConfigError(f'PromptCheckpointer keep_best must be >= 1, got {keep_best}')
    self.model_dir = os.fspath(model_dir)
    self.best_metric, self.best_mode, self.save_numpy = best_metric, best_mode, save_numpy
    _check_writable(epath.Path(self.model_dir))
    self._ckpt_dir = epath.Path(self.model_dir) / CHECKPOINTS
    self._numpy_dir = epath.Path(self.model_dir) / NUMPY_CHECKPOINTS
    self._manager = ocp.CheckpointManager(
        self._ckpt_dir,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=_retention_policy(keep, best_metric, best_mode, keep_best),
            # orbax writes the `metrics` item (and ranks steps) only when best_fn is set.
            best_fn=_metric_fn(best_metric, best_mode) if best_metric else None,
            best_mode=best_mode, create=True, cleanup_tmp_directories=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})
    # Steps found on disk without a commit marker: interrupted copies, never offered for restore.
    self._uncommitted = {s for s in self._manager.all_steps() if not _is_committed(self._step_dir(s))}
    for s in sorted(self._uncommitted):
      logging.warning('Ignoring incomplete checkpoint %s (no commit marker)', self._step_dir(s))

  def _step_dir(self, step: int) -> epath.Path:
    return self._ckpt_dir / str(step)

  def save(self, step: int, state: TrainState, *, data_position: int, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Writes `state` as checkpoint `step` (asynchronously; see `wait_until_finished`).

    Returns False, writing nothing, when the step exists already or is not after the latest checkpoint
    (unless `force`). Eval metrics used for best-checkpoint retention must come with the same call.
    """
    step = int(step)
    _check_global(state)
    if step in self._manager.all_steps():
      logging.info('Checkpoint %s already exists; not saving it again', self._step_dir(step))
      return False
    latest = self.latest_step()
    if latest is not None and step < latest and not force:
      logging.warning('Not saving step %d: %s already holds the later step %d (pass force=True to save anyway)',
                      step, self._ckpt_dir, latest)
      return False
    json_metrics = _to_json(dict(metrics)) if metrics else None
    ranked = None
    if self.best_metric and json_metrics and self.best_metric in json_metrics:
      value = json_metrics[self.best_metric]
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'best_metric {self.best_metric!r} must be a number, got {value!r} at step {step}')
      ranked = json_metrics
    meta = {'step': step, 'data_position': int(data_position), 'metrics': json_metrics}
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        # Our checks above replace orbax's, which would also count uncommitted step dirs as the latest step.
        metrics=ranked, force=True)
    if not saved:
      return False
    if self.save_numpy:
      prompt = _prompt_to_host(state)  # collective when the prompt is sharded across hosts
      if jax.process_index() == 0:
        _write_npy(prompt, self._numpy_dir / f'{_NUMPY_PREFIX}{step}' / PROMPT_FILE)
    if jax.process_index() == 0:
      self._prune_numpy(set(self._manager.all_steps()))
    return True

  def _prune_numpy(self, kept: set[int]) -> None:
    """Deletes numpy copies whose orbax step was dropped by retention (or never committed)."""
    if not self._numpy_dir.exists():
      return
    for child in self._numpy_dir.iterdir():
      step = _parse_step(child.name, _NUMPY_PREFIX)
      if step is not None and step not in kept:
        child.rmtree()

  def all_steps(self) -> list[int]:
    return sorted(s for s in self._manager.all_steps() if s not in self._uncommitted)

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The step with the best `best_metric`; None without `best_metric` or before any step has it."""
    if self.best_metric is None:
      return None
    return self._manager.best_step()

  def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """(state, {'step', 'data_position', 'metrics'}) of `step` (default: the latest). `template` gives the
    tree, shapes, dtypes and shardings: abstract `jax.ShapeDtypeStruct`s (with `sharding=`) or arrays."""
    self._manager.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f'no checkpoint to restore in {self._ckpt_dir}')
    step = int(step)
    step_dir = self._step_dir(step)
    if step in self._uncommitted or (step_dir.exists() and not _is_committed(step_dir)):
      raise CheckpointError(f'checkpoint {step_dir} is incomplete (no {" or ".join(_COMMIT_MARKERS)}): a save '
                            'was interrupted; delete it or restore another step')
    if step not in self._manager.all_steps():
      raise CheckpointError(f'no checkpoint for step {step} in {self._ckpt_dir} (have {self.all_steps()})')
    _check_prompt_shape(step_dir, _saved_prompt_shape(step_dir), _shape(_prompt_leaf(template)))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(template)), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for damaged or mismatched files
      raise CheckpointError(f'cannot restore checkpoint {step_dir}: it is damaged or does not match the '
                            f'template (optimizer or prompt configuration changed?): {e}') from e
    meta = dict(restored['meta'] or {})
    return restored['state'], {'step': step, 'data_position': int(meta.get('data_position', 0)),
                               'metrics': meta.get('metrics')}

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> PromptCheckpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ------------------------------------------------------------------------------------------ orbax pieces


def _metric_fn(name: str, mode: str):
  worst = -math.inf if mode == 'max' else math.inf

  def fn(metrics: dict) -> float:
    value = float(metrics.get(name, worst))
    return worst if math.isnan(value) else value  # NaN would break the sort

  return fn


def _retention_policy(keep: int, best_metric: str | None, best_mode: str, keep_best: int):
  """Keep the `keep` newest steps, plus the `keep_best` best. orbax's `max_to_keep` + `best_fn` alone keeps
  only the best N (and every step without metrics), so the two policies are combined explicitly."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if best_metric:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=_metric_fn(best_metric, best_mode), reverse=best_mode == 'min', n=keep_best,
        keep_checkpoints_without_metrics=False))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


def _is_committed(step_dir: epath.Path) -> bool:
  return any((step_dir / marker).exists() for marker in _COMMIT_MARKERS)


def _saved_prompt_shape(step_dir: epath.Path) -> tuple[int, ...]:
  try:
    tree = ocp.StandardCheckpointHandler().metadata(step_dir / 'state')
    if tree is None:
      raise ValueError('no tree metadata')
    return tuple(tree['prompt']['prompt'].shape)
  except Exception as e:  # missing or unreadable _METADATA, or a tree without a prompt
    raise CheckpointError(f'checkpoint {step_dir} is damaged: cannot read the prompt metadata of '
                          f'{step_dir / "state"}: {e!r}') from e


def _check_prompt_shape(step_dir: epath.Path, saved: tuple[int, ...], wanted: tuple[int, ...]) -> None:
  if tuple(saved) != tuple(wanted):
    raise CheckpointError(f'checkpoint {step_dir} holds a prompt of shape {tuple(saved)} but the template '
                          f'prompt has shape {tuple(wanted)}')


def _abstract(template: Any) -> Any:
  """ShapeDtypeStructs for the restore target; arrays keep their sharding."""
  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)

  return jax.tree.map(leaf, template)


def _check_global(state: TrainState) -> None:
  """Multi-host saving needs global arrays; a host-local leaf would fail deep inside orbax."""
  if jax.process_count() == 1:
    return
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      raise CheckpointError(f'state leaf {jax.tree_util.keystr(path)} is a host-local value; in multi-host '
                            'runs place the state with ShardedSteps.place_state so every leaf is a global array')


def _to_json(value: Any) -> Any:
  """Metrics -> JSON-serialisable values (numpy/jax scalars become Python numbers)."""
  if isinstance(value, dict):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, (str, bool, int, float)) or value is None:
    return value
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = _to_host(value)
    return array.item() if array.size == 1 else array.tolist()
  return str(value)


def _parse_step(name: str, prefix: str = '') -> int | None:
  rest = name[len(prefix):] if name.startswith(prefix) else None
  return int(rest) if rest and rest.isdigit() else None


# ---------------------------------------------------------------------------------------------- files


def _check_writable(model_dir: epath.Path) -> None:
  """Fails now, naming the dir, rather than at the first save hours into training."""
  probe = model_dir / f'.jaxprompt_write_probe.{jax.process_index()}.{uuid.uuid4().hex}'
  try:
    model_dir.mkdir(parents=True, exist_ok=True)
    probe.write_text('probe')
    probe.unlink()
  except Exception as e:  # OSError locally; gcs backends raise their own types
    raise CheckpointError(f'MODEL_DIR {model_dir} is not writable: {e}') from e


def _prompt_leaf(state_or_prompt: Any) -> Any:
  """The [P, d] prompt of a TrainState, a {'prompt': ...} tree or the array itself."""
  x = state_or_prompt.prompt if isinstance(state_or_prompt, TrainState) else state_or_prompt
  while isinstance(x, Mapping) and 'prompt' in x:
    x = x['prompt']
  return x


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, 'shape') else np.shape(x)


def _prompt_to_host(state_or_prompt: Any) -> np.ndarray:
  return _to_host(_prompt_leaf(state_or_prompt))


def _to_host(x: Any) -> np.ndarray:
  """A numpy copy of a (possibly global, multi-host) array; a gather is collective across processes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _write_npy(array: np.ndarray, path: epath.Path) -> None:
  """Writes beside the target, then renames: a reader never sees half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  tmp = path.parent / f'.{path.name}.tmp-{uuid.uuid4().hex}'
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)  # os.replace locally; a copy + delete on gs:// whose objects appear whole anyway


def export_prompt(state_or_prompt: Any, path: str) -> str:
  """Writes the prompt as a float32 [P, d] .npy (no pickles) at `path` (local or gs://); returns the path.

  Accepts a TrainState, a {'prompt': [P, d]} tree or an array. A prompt sharded across hosts is gathered
  collectively, so then every process must call this (each writes the same bytes).
  """
  array = _prompt_to_host(state_or_prompt)
  if array.ndim != 2:
    raise PromptError(f'cannot export a prompt of shape {array.shape} to {path}: expected [length, embed]')
  try:
    _write_npy(array.astype(np.float32), epath.Path(os.fspath(path)))
  except Exception as e:  # OSError locally; gcs backends raise their own types
    raise PromptError(f'cannot write the prompt to {path}: {e}') from e
  return os.fspath(path)


def _read_npy(path: epath.Path) -> np.ndarray:
  try:
    array = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
  except Exception as e:
    raise CheckpointError(f'cannot read prompt file {path}: {e}') from e
  if array.ndim != 2:
    raise CheckpointError(f'prompt file {path} holds shape {array.shape}, expected [length, embed]')
  return array.astype(np.float32)


def _read_orbax_prompt(step_dir: epath.Path) -> np.ndarray:
  """Reads only the prompt leaf of an orbax step, onto the host."""
  if not _is_committed(step_dir):
    raise CheckpointError(f'checkpoint {step_dir} is incomplete (no {" or ".join(_COMMIT_MARKERS)})')
  try:
    tree = ocp.PyTreeCheckpointer().restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
        item={'prompt': {'prompt': 0}}, restore_args={'prompt': {'prompt': ocp.RestoreArgs(restore_type=np.ndarray)}},
        partial_restore=True))
  except Exception as e:
    raise CheckpointError(f'cannot read the prompt from checkpoint {step_dir}: {e}') from e
  return np.asarray(tree['prompt']['prompt'], np.float32)


def _committed_steps(ckpt_dir: epath.Path) -> list[int]:
  steps = [_parse_step(p.name) for p in ckpt_dir.iterdir()] if ckpt_dir.is_dir() else []
  return sorted(s for s in steps if s is not None and _is_committed(ckpt_dir / str(s)))


def load_prompt_from_checkpoint(model_dir_or_step_dir: str, step: int | None = None) -> np.ndarray:
  """The float32 [P, d] prompt of a training checkpoint, without the optimizer state or frozen model.

  Accepts MODEL_DIR (uses `step`, default the latest; prefers the numpy copy), its `checkpoints` dir, an
  orbax step dir (`.../checkpoints/<step>`), a numpy step dir (`.../checkpoint_<step>`) or a `.npy` file.
  """
  path = epath.Path(os.fspath(model_dir_or_step_dir))
  if not path.exists():
    raise CheckpointError(f'checkpoint path {path} does not exist')
  if path.is_file():
    return _read_npy(path)
  single = (path / PROMPT_FILE).exists() or (path / 'state').exists()
  if single:
    named = _parse_step(path.name, _NUMPY_PREFIX if path.name.startswith(_NUMPY_PREFIX) else '')
    if step is not None and named is not None and named != int(step):
      raise CheckpointError(f'{path} is the checkpoint of step {named}, not of the requested step {step}')
    return _read_npy(path / PROMPT_FILE) if (path / PROMPT_FILE).exists() else _read_orbax_prompt(path)
  model_dir, ckpt_dir = (path.parent, path) if path.name == CHECKPOINTS else (path, path / CHECKPOINTS)
  steps = _committed_steps(ckpt_dir)
  if not steps:
    raise CheckpointError(f'no prompt checkpoints in {path} (expected {ckpt_dir}/<step>/ or a prompt .npy)')
  if step is None:
    step = steps[-1]
  elif int(step) not in steps:
    raise CheckpointError(f'no checkpoint for step {step} in {ckpt_dir} (have {steps})')
  numpy_copy = model_dir / NUMPY_CHECKPOINTS / f'{_NUMPY_PREFIX}{int(step)}' / PROMPT_FILE
  return _read_npy(numpy_copy) if numpy_copy.exists() else _read_orbax_prompt(ckpt_dir / str(step))
