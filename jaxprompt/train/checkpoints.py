"""Training checkpoints for every tuning method: the `TrainState`, the data position and the batch size.

  checkpoints/<step>/{state,meta,metrics}/    orbax, written atomically (tmp dir + rename / commit file)
  numpy_checkpoints/checkpoint_<step>/<name>  the method's `numpy_copy` files (process 0) + fingerprint.json

A state holding NaN / inf is never saved (TrainingError) and a step holding one (an older release's) is
restored as damaged: the last finite checkpoint is what a run resumes from. Old steps are deleted through
`step_dirs.remove` (renamed, then deleted); a start finishes the deletions and removes the temporary dirs of
saves a killed run left, before anything else (synchronously: orbax's own clean-up runs in a thread that could
delete a later save's temporary dir).

Multi-host: every process calls `save`/`restore`/`restore_latest` alike; saved leaves must be global arrays.
Damaged steps (truncated or deleted files, unreadable metadata, no commit marker) are never modified, moved or
deleted, and orbax's retention never sees them. `restore_latest` resumes from the newest intact step, warning
with each newer damaged dir (one CheckpointError when none is readable). Saving a damaged step's number again
is skipped with a warning naming the dir; the next period's save is written, so nothing is lost (move the dir
away to save that step). Resuming with another BATCH_SIZE (the data position counts batches) or frozen model
(`use_model`) is a ConfigError.
The previous release's checkpoints (no batch size, `prompt/prompt`) still restore. Reading one step's files
for eval / infer / export, without a checkpointer: `jaxprompt.train.checkpoint_files`.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxprompt.errors import CheckpointError, ConfigError, PromptError, TrainingError
from jaxprompt.formats import fingerprint_files, npy_io
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.parallel import host
from jaxprompt.runtime import finite
from jaxprompt.runtime.state import TrainState
from jaxprompt.train import orbax_steps, step_dirs

log = logging.getLogger('jaxprompt')


class _IntactSteps(ocp.path.step.NameFormat):
  """orbax's step names minus the `hidden` (damaged) steps, which orbax then never lists, keeps or deletes."""

  def __init__(self, hidden: set[int]):
    self.hidden, self._standard = hidden, ocp.path.step.standard_name_format()
    self.build_name = self._standard.build_name

  def find_all(self, base_path: epath.PathLike):
    return (m for m in self._standard.find_all(base_path) if m.step not in self.hidden)

  def find_step(self, base_path: epath.PathLike, step: int):
    return self._standard.find_step(base_path, step)  # orbax asks only for steps find_all listed


class StateCheckpointer:
  """Saves and restores `TrainState`s under `model_dir`, keeping the `keep` newest steps plus the `keep_best`
  best by `best_metric` (`best_mode` 'max' or 'min'). `numpy_copy(state)`, also settable as the attribute, gives
  files to write beside each step ({'prompt.npy': [P, d]} or None); it runs on every process (it may gather);
  `fingerprint` (the frozen model, set by `use_model`) goes beside them as fingerprint.json."""

  def __init__(self, model_dir: str, *, keep: int = 3, best_metric: str | None = None, best_mode: str = 'max',
               keep_best: int = 1, numpy_copy: Callable[[TrainState], Mapping[str, Any] | None] | None = None):
    if keep < 1:
      raise ConfigError(f'StateCheckpointer keep must be >= 1, got {keep}')
    if best_mode not in ('max', 'min'):
      raise ConfigError(f"StateCheckpointer best_mode must be 'max' or 'min', got {best_mode!r}")
    if best_metric is not None and keep_best < 1:
      raise ConfigError(f'StateCheckpointer keep_best must be >= 1, got {keep_best}')
    self.model_dir = os.fspath(model_dir)
    self.best_metric, self.best_mode, self.numpy_copy = best_metric, best_mode, numpy_copy
    self.fingerprint: Mapping[str, Any] | None = None
    _check_writable(epath.Path(self.model_dir))
    self._ckpt_dir = epath.Path(self.model_dir) / step_dirs.CHECKPOINTS
    self._numpy_dir = epath.Path(self.model_dir) / step_dirs.NUMPY_CHECKPOINTS
    if jax.process_index() == 0:
      for path in step_dirs.unfinished_saves(self._ckpt_dir):
        path.rmtree()
        log.info('Removed %s: the temporary dir of a save that never finished', path)
      for path in step_dirs.sweep(self._ckpt_dir) + step_dirs.sweep(self._numpy_dir):
        log.info('Finished deleting %s: a run stopped while deleting this old step', path)
    self._damaged = orbax_steps.scan_unreadable(self._ckpt_dir)  # step -> why it cannot be restored
    for step, reason in sorted(self._damaged.items()):
      log.warning('Ignoring checkpoint %s, left untouched: %s', self._step_dir(step), reason)
    self._names = _IntactSteps(set(self._damaged))
    self._manager = ocp.CheckpointManager(
        self._ckpt_dir,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=_retention_policy(keep, best_metric, best_mode, keep_best),
            # orbax writes the `metrics` item (and ranks steps) only when best_fn is set.
            best_fn=_metric_fn(best_metric, best_mode) if best_metric else None,
            best_mode=best_mode,
            create=True,
            cleanup_tmp_directories=False,  # done above, before any save can start
            todelete_subdir=step_dirs.DELETING,  # renamed, then `sweep` deletes them (local disks only)
            step_name_format=self._names),
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})

  def _step_dir(self, step: int) -> epath.Path:
    return self._ckpt_dir / str(step)

  def save(self, step: int, state: TrainState, *, data_position: int, batch_size: int | None = None,
           metrics: dict | None = None, force: bool = False) -> bool:
    """Writes `state` as step `step` asynchronously; False (nothing written) when the step exists (intact or
    damaged) or is not after the latest (unless `force`). `data_position` counts batches of `batch_size`."""
    step = int(step)
    _check_global(state)
    if bad := finite.non_finite_leaves(state):
      latest = self.latest_step()
      kept = 'no checkpoint was saved yet' if latest is None else f'the last finite checkpoint, step {latest}, is kept'
      raise TrainingError(f'not saving step {step} in {self._ckpt_dir}: NaN/inf in {", ".join(bad)}; {kept} '
                          '(lower LEARNING_RATE)')
    if step in self._damaged:
      log.warning(
          'Not saving step %d: %s holds a damaged checkpoint of that step, left untouched; move it away '
          'to have this step saved again', step, self._step_dir(step))
      return False
    if step in self._manager.all_steps():
      log.info('Checkpoint %s already exists; not saving it again', self._step_dir(step))
      return False
    latest = self.latest_step()
    if latest is not None and step < latest and not force:
      log.warning('Not saving step %d: %s already holds the later step %d (pass force=True to save anyway)', step,
                  self._ckpt_dir, latest)
      return False
    json_metrics = _to_json(dict(metrics)) if metrics else None
    ranked = None
    if self.best_metric and json_metrics and self.best_metric in json_metrics:
      value = json_metrics[self.best_metric]
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'best_metric {self.best_metric!r} must be a number, got {value!r} at step {step}')
      ranked = json_metrics
    meta = {
        'step': step, 'data_position': int(data_position),
        'batch_size': None if batch_size is None else int(batch_size), 'metrics': json_metrics
    }
    if not self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        # Our checks above replace orbax's, which would also count uncommitted step dirs as the latest step.
        metrics=ranked,
        force=True):
      return False
    self._sweep(idle=False)  # the old steps the previous save's retention renamed away (this one's may rename)
    files = self.numpy_copy(state) if self.numpy_copy is not None else None  # collective when sharded
    if jax.process_index() == 0:
      if self.fingerprint is not None:  # first: a step dir holding the method's files always says its model
        fingerprint_files.write(
            self._numpy_step_dir(step) / fingerprint_files.STEP_FILE, self.fingerprint, error=CheckpointError)
      for name, value in (files or {}).items():
        write = npy_io.write_npz if isinstance(value, Mapping) else npy_io.write_npy  # named arrays: .npz
        write(value, str(self._numpy_step_dir(step) / name), what='numpy copy', error=CheckpointError)
      # Numpy copies whose step retention dropped go too; a damaged step's copy stays.
      kept = set(self._manager.all_steps()) | set(self._damaged)
      for child in list(self._numpy_dir.iterdir()) if self._numpy_dir.exists() else ():
        if step_dirs.parse_step(child.name, step_dirs.NUMPY_PREFIX) not in kept | {None}:
          step_dirs.remove(child)
    return True

  def _numpy_step_dir(self, step: int) -> epath.Path:
    return self._numpy_dir / f'{step_dirs.NUMPY_PREFIX}{step}'

  def recorded_model(self, step: int) -> Mapping[str, Any] | None:
    """The frozen model's fingerprint saved with `step`; None without one (an older release's step, model tuning),
    or when unreadable (warned: a lost record must not block resuming)."""
    try:
      return fingerprint_files.read(self._numpy_step_dir(step) / fingerprint_files.STEP_FILE)
    except PromptError as e:
      log.warning('Ignoring the model record of step %d: %s', step, e)
      return None

  def use_model(self, fingerprint: Mapping[str, Any] | None) -> None:
    """Saves `fingerprint` (this run's frozen model; None: nothing to record, model tuning) with every step from
    now on, after refusing (ConfigError naming both models, nothing changed) a MODEL_DIR whose latest step was
    trained on another model: resuming there would mix two models."""
    step = self.latest_step()
    recorded = None if fingerprint is None or step is None else self.recorded_model(step)
    if fingerprint_lib.matches(recorded, fingerprint) is False:
      raise ConfigError(f'MODEL_DIR {self.model_dir} was trained (step {step}, {self._numpy_step_dir(step)}) on '
                        f'{fingerprint_lib.mismatch(recorded, fingerprint)}: resume with the model it was trained on '
                        '(MODEL_CONFIG, INITIAL_CHECKPOINT_PATH, VOCABULARY) or in a new MODEL_DIR; nothing changed')
    self.fingerprint = fingerprint

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())  # committed steps not known to be damaged

  def latest_step(self) -> int | None:
    return max(self._manager.all_steps(), default=None)

  def best_step(self) -> int | None:
    """The step with the best `best_metric`; None without it or before any step has it."""
    return None if self.best_metric is None else self._manager.best_step()

  def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """(state, {'step', 'data_position', 'batch_size', 'metrics'}) of `step` (default: the latest), onto
    `template`'s tree, shapes, dtypes and shardings (arrays or ShapeDtypeStructs); damaged: CheckpointError."""
    self._manager.wait_until_finished()
    if step is None and self.latest_step() is None:
      raise CheckpointError(f'no checkpoint to restore in {self._ckpt_dir}')
    return self._restore(template, int(self.latest_step() if step is None else step))

  def restore_latest(self, template: TrainState, *, batch_size: int) -> tuple[TrainState, dict] | None:
    """`restore` of the newest readable step, warning about each newer damaged one; None without any step.
    CheckpointError when none is readable; ConfigError when it was trained with another `batch_size`."""
    self._manager.wait_until_finished()
    skipped = []
    for step in sorted(set(self._manager.all_steps()) | set(self._damaged), reverse=True):
      if step not in self._damaged:
        try:
          result, reason = self._restore(template, step, batch_size=batch_size), None
        except orbax_steps.Damaged as e:
          result, reason = None, str(e)
        ok = reason is None  # every process must resume from the same step
        if ok if jax.process_count() == 1 else np.all(multihost_utils.process_allgather(np.int32(ok))):
          for bad in skipped:
            log.warning(
                'Resuming from step %d, not from the damaged checkpoint %s (left untouched; move it away '
                'to have step %d saved again): %s', step, self._step_dir(bad), bad, self._damaged[bad])
          return result
        self._damaged[step] = reason or f'checkpoint {self._step_dir(step)} is damaged: another process failed'
        self._names.hidden.add(step)  # orbax's listing, retention and deletion now pass it by
        self._manager.reload()
      skipped.append(step)
    if not skipped:
      return None
    raise CheckpointError(f'no readable checkpoint in {self._ckpt_dir}, every step is damaged or incomplete '
                          '(move them away to start afresh): ' + '; '.join(self._damaged[s] for s in skipped))

  def _restore(self, template: TrainState, step: int, batch_size: int | None = None) -> tuple[TrainState, dict]:
    step_dir = self._step_dir(step)
    if step in self._damaged:
      raise orbax_steps.Damaged(self._damaged[step])
    if step not in self._manager.all_steps():
      raise CheckpointError(f'no checkpoint for step {step} in {self._ckpt_dir} (have {self.all_steps()})')
    try:
      meta = dict(ocp.JsonCheckpointHandler().restore(step_dir / 'meta') or {})
    except Exception as e:  # missing or unparsable JSON
      raise orbax_steps.Damaged(
          f'checkpoint {step_dir} is damaged: cannot read its meta: {orbax_steps.one_line(e)}') from e
    saved, target = orbax_steps.saved_shapes(step_dir), _abstract(template)
    roots = {path.split('/')[0] for path in saved}  # the previous release's TrainState(step, prompt, ...)
    if legacy := 'trainable' not in roots and 'prompt' in roots:
      target = dict(step=target.step, prompt=target.trainable, opt_state=target.opt_state, rng=target.rng)
    orbax_steps.check_shapes(step_dir, saved, target)
    batch = meta.get('batch_size')  # None: an older release's checkpoint
    if None not in (batch, batch_size) and int(batch) != int(batch_size):
      raise ConfigError(f'MODEL_DIR {self.model_dir} was trained with BATCH_SIZE={batch} (step {step}) but '
                        f'this run has BATCH_SIZE={batch_size}: saved data position counts batches of {batch} '
                        f'examples; resume with --gin.BATCH_SIZE={batch} or start a new MODEL_DIR')
    try:
      args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
      state = self._manager.restore(step, args=args)['state']
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      raise orbax_steps.Damaged(
          f'checkpoint {step_dir} is damaged: cannot read its state: {orbax_steps.one_line(e)}') from e
    if legacy:
      state = TrainState(state['step'], state['prompt'], state['opt_state'], state['rng'])
    if bad := finite.non_finite_leaves(state):  # saved by a release that did not check
      raise orbax_steps.Damaged(f'checkpoint {step_dir} holds NaN/inf in {", ".join(bad)}')
    return state, {
        'step': step, 'data_position': int(meta.get('data_position', 0)),
        'batch_size': None if batch is None else int(batch), 'metrics': meta.get('metrics')
    }

  def _sweep(self, idle: bool = True) -> None:
    if jax.process_index() == 0:  # orbax's retention renames old steps on process 0 only
      step_dirs.sweep(self._ckpt_dir, idle)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()
    self._sweep()

  def close(self) -> None:
    self._manager.close()
    self._sweep()

  def __enter__(self) -> StateCheckpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _metric_fn(name: str, mode: str) -> Callable[[dict], float]:
  worst = -math.inf if mode == 'max' else math.inf  # also for NaN, which would break the sort
  return lambda metrics: worst if math.isnan(value := float(metrics.get(name, worst))) else value


def _retention_policy(keep: int, best_metric: str | None, best_mode: str, keep_best: int):
  """Keep the `keep` newest steps, plus the `keep_best` best. orbax's `max_to_keep` + `best_fn` alone keeps
  only the best N (and every step without metrics), so the two policies are combined explicitly."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if best_metric:
    policies.append(
        ocp.checkpoint_managers.BestN(get_metric_fn=_metric_fn(best_metric, best_mode), reverse=best_mode == 'min',
                                      n=keep_best, keep_checkpoints_without_metrics=False))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


def _abstract(template: Any) -> Any:
  """ShapeDtypeStructs for the restore target; arrays keep their sharding."""
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
          np.shape(x),
          np.asarray(x).dtype if not hasattr(x, 'dtype') else x.dtype, sharding=x.sharding
          if isinstance(x, jax.Array) else None), template)


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
    array = host.host_value(value)
    return array.item() if array.size == 1 else array.tolist()
  return str(value)


def _check_writable(model_dir: epath.Path) -> None:
  """Fails now, naming the dir, rather than at the first save hours into training."""
  probe = model_dir / f'.jaxprompt_write_probe.{jax.process_index()}.{uuid.uuid4().hex}'
  try:
    model_dir.mkdir(parents=True, exist_ok=True)
    probe.write_text('probe')
    probe.unlink()
  except Exception as e:  # OSError locally; gcs backends raise their own types
    raise CheckpointError(f'MODEL_DIR {model_dir} is not writable: {e}') from e
