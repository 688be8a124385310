"""What a training run shows and leaves behind: a progress bar on a terminal or plain periodic log lines,
TensorBoard scalars, metric histories as JSON, and a PNG of the training curves.

Files in MODEL_DIR (process 0 only):
  events.out.tfevents.*      TensorBoard scalars train/* and eval/*
  train_metrics.jsonl        one line per log period: {"step": ..., "loss": ..., ...}
  eval_metrics.jsonl         one line per evaluation; eval_metrics.json holds the latest
  training_curves.png        loss, token accuracy, learning rate, norms and eval metrics against the step
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tensorflow as tf

log = logging.getLogger('jaxprompt')

TRAIN_HISTORY = 'train_metrics.jsonl'
EVAL_HISTORY = 'eval_metrics.jsonl'
EVAL_LATEST = 'eval_metrics.json'
CURVES = 'training_curves.png'
_TRAIN_KEYS = ('loss', 'loss_per_token', 'token_accuracy', 'grad_norm', 'param_norm', 'learning_rate', 'examples',
               'encoder_fill')


def create_writer(model_dir: str) -> Any:
  """clu's default writer: TensorBoard scalars on process 0, logging only on the other hosts."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports tensorboard)
  return metric_writers.create_default_writer(model_dir, just_logging=jax.process_index() > 0)


def _finite(value: float) -> float | None:
  return float(value) if math.isfinite(float(value)) else None


def _read_jsonl(path: str) -> list[dict]:
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path, 'r') as f:
    return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def _write_jsonl(path: str, rows: list[dict]) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))


def _append_jsonl(path: str, row: dict) -> None:
  rows = _read_jsonl(path) + [row]  # gfile has no portable append (gs://): rewrite, the file is small
  _write_jsonl(path, rows)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class TrainObserver:
  """Receives each finished step's host metrics and each evaluation; reports them every `log_period` steps."""

  def __init__(self, model_dir: str, *, total_steps: int, start_step: int, log_period: int,
               progress_bar: bool | None = None):
    self.model_dir = model_dir
    self.total_steps, self.start_step, self.log_period = total_steps, start_step, log_period
    self.chief = jax.process_index() == 0
    self.writer = create_writer(model_dir)
    self._pending: list[Mapping[str, float]] = []
    self._period_start = time.monotonic()
    self._run_start = self._period_start
    self._last_step = start_step
    if self.chief:
      self._truncate_histories(start_step)
    use_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    self._bar = None
    if use_bar and self.chief:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, unit='step', file=sys.stderr, dynamic_ncols=True,
                       desc='train')

  def _truncate_histories(self, step: int) -> None:
    """After a resume, drop entries logged past the restored step (they are about to be redone)."""
    for name in (TRAIN_HISTORY, EVAL_HISTORY):
      path = os.path.join(self.model_dir, name)
      rows = _read_jsonl(path)
      kept = [r for r in rows if r.get('step', 0) <= step]
      if len(kept) != len(rows):
        _write_jsonl(path, kept)

  def message(self, text: str) -> None:
    """A line for the user, printed above the progress bar when there is one."""
    if not self.chief:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      log.info('%s', text)

  def step(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Step `step` (1-based count of finished steps) finished with these host metrics."""
    weight = max(float(metrics.get('weight_sum', 1.0)), 1.0)
    row = {k: float(metrics[k]) for k in _TRAIN_KEYS if k in metrics}
    row['loss_per_token'] = float(metrics['loss']) / weight
    self._pending.append(row)
    if self._bar is not None:
      self._bar.update(step - self._last_step)
      self._bar.set_postfix(loss=f'{row["loss_per_token"]:.4f}', refresh=False)
    self._last_step = step
    if step % self.log_period == 0 or step == self.total_steps:
      self._report(step)

  def _report(self, step: int) -> None:
    if not self._pending:
      return
    now = time.monotonic()
    steps = len(self._pending)
    means = {k: float(np.mean([r[k] for r in self._pending if k in r])) for k in self._pending[-1]}
    means['learning_rate'] = self._pending[-1].get('learning_rate', float('nan'))
    means['param_norm'] = self._pending[-1].get('param_norm', float('nan'))
    means['steps_per_sec'] = steps / max(now - self._period_start, 1e-9)
    self._pending, self._period_start = [], now
    self.writer.write_scalars(step, {f'train/{k}': v for k, v in means.items() if math.isfinite(v)})
    if not self.chief:
      return
    _append_jsonl(os.path.join(self.model_dir, TRAIN_HISTORY),
                  {'step': step, **{k: _finite(v) for k, v in means.items()}})
    if self._bar is None:
      remaining = (self.total_steps - step) / max(means['steps_per_sec'], 1e-9)
      log.info(
          'step %d/%d  loss/token %.4f  token_acc %.3f  lr %.3g  grad_norm %.3g  %.2f steps/s  '
          '%.1f examples/step  encoder fill %.0f%%  ETA %s', step, self.total_steps, means['loss_per_token'],
          means.get('token_accuracy', float('nan')), means['learning_rate'], means.get('grad_norm', float('nan')),
          means['steps_per_sec'], means.get('examples', float('nan')), 100 * means.get('encoder_fill', float('nan')),
          format_duration(remaining))

  def eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    numbers = {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    }
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in numbers.items() if math.isfinite(v)})
    self.writer.flush()
    if not self.chief:
      return
    row = {'step': step, **{k: (_finite(v) if k in numbers else v) for k, v in metrics.items()}}
    _append_jsonl(os.path.join(self.model_dir, EVAL_HISTORY), row)
    with tf.io.gfile.GFile(os.path.join(self.model_dir, EVAL_LATEST), 'w') as f:
      f.write(json.dumps(row, indent=2, sort_keys=True) + '\n')
    shown = '  '.join(f'{k} {v:.4g}' for k, v in numbers.items() if k != 'num_examples')
    self.message(f'eval at step {step}: {shown}')

  def close(self, plot: bool = True) -> None:
    """Flushes everything; draws the curves PNG (process 0)."""
    self._report(self._last_step)
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self.writer.flush()
    self.writer.close()
    if plot and self.chief:
      try:
        plot_curves(self.model_dir)
      except Exception as e:  # pylint: disable=broad-except  (a plot must never fail a finished run)
        log.warning('could not draw %s: %s', CURVES, e)


def plot_curves(model_dir: str, filename: str = CURVES) -> str | None:
  """Draws the train / eval histories of `model_dir` into a PNG (matplotlib, Agg); returns its path."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  train = _read_jsonl(os.path.join(model_dir, TRAIN_HISTORY))
  evals = _read_jsonl(os.path.join(model_dir, EVAL_HISTORY))
  if not train and not evals:
    return None
  panels = [
      k for k in ('loss_per_token', 'token_accuracy', 'learning_rate', 'grad_norm', 'param_norm') if any(
          r.get(k) is not None for r in train)
  ]
  eval_keys = sorted({
      k for r in evals for k, v in r.items() if k not in ('step', 'num_examples') and isinstance(v, (int, float))
  })
  count = len(panels) + (1 if eval_keys else 0)
  cols = min(3, count)
  rows = math.ceil(count / cols)
  fig = Figure(figsize=(5 * cols, 3.2 * rows))
  FigureCanvasAgg(fig)
  for i, key in enumerate(panels):
    ax = fig.add_subplot(rows, cols, i + 1)
    points = [(r['step'], r[key]) for r in train if r.get(key) is not None]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker='.' if len(points) < 50 else None)
    ax.set_title(f'train {key}')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  if eval_keys:
    ax = fig.add_subplot(rows, cols, count)
    for key in eval_keys:
      points = [(r['step'], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
      ax.plot([p[0] for p in points], [p[1] for p in points], marker='o', label=key)
    ax.set_title('eval')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.tight_layout()
  path = os.path.join(model_dir, filename)
  with tf.io.gfile.GFile(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=90)
  return path
