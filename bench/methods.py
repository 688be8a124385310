"""Every tuning method on the shipped demo model's held-out task: held-out accuracy against trainable parameters.

Each method trains the same number of steps, once per seed, through `jaxprompt.train` with the demo's gin files
(`models/demo.gin`, `runs/demo.gin`: the frozen demo T5 1.1, its held-out task "raw review -> topic", batch 32)
plus the method's own `methods/<name>.gin`, and is scored on the whole validation split (500 examples, rank
classification over the labels). Prints a table (mean and range over seeds) and one `JSON ` line, and draws
accuracy against trainable parameters. Run from the repo root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/methods.py [--methods prompt_tuning,prefix_tuning] \
      [--seeds 0,1,2] [--steps 100] [--png bench/methods.png] [--output /tmp/jaxprompt_methods]

The frozen model without any prompt scores ~19% here (the demo's first line); model tuning reaches 100%.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# name -> (gin file, bindings): every method at 20 prompt / prefix rows, with its gin file's optimizer and
# learning rate (a method file overrides the run's Adafactor at 0.3 where that does not train it: Adam 1e-2 for
# P-tuning's LSTM, Adam 1e-3 for prefix tuning's MLP, Adafactor 0.03 for P-tuning v2; each the best of a one-seed
# sweep on this task, `--learning_rates`).
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    'prompt_tuning': ('methods/prompt_tuning.gin', ('PROMPT_LENGTH = 20',)),
    'p_tuning': ('methods/p_tuning.gin', ('PROMPT_LENGTH = 20',)),
    'per_layer_prompts': ('methods/per_layer_prompts.gin', ('PROMPT_LENGTH = 20',)),
    'prefix_tuning': ('methods/prefix_tuning.gin', ('PREFIX_LENGTH = 20',)),
    'p_tuning_v2': ('methods/p_tuning_v2.gin', ('PREFIX_LENGTH = 20',)),
}
DEMO_GIN = ('models/demo.gin', 'runs/demo.gin')


def train_one(method: str, seed: int, steps: int, output: str, learning_rate: float | None = None) -> dict[str, Any]:
  """One training run of `method` with `seed`: its held-out accuracy, trainable parameters and time."""
  import gin  # pylint: disable=g-import-not-at-top

  from jaxprompt.cli import gin_config  # pylint: disable=g-import-not-at-top
  from jaxprompt.cli.gin_config import quote  # pylint: disable=g-import-not-at-top
  from jaxprompt.commands import train as trainer  # pylint: disable=g-import-not-at-top
  from jaxprompt.train.loop import tree_size  # pylint: disable=g-import-not-at-top
  gin_file, bindings = METHODS[method]
  if learning_rate is not None:
    bindings = bindings + (f'LEARNING_RATE = {learning_rate}',)
  model_dir = os.path.join(output, f'{method}_seed{seed}')
  if os.path.isdir(model_dir):
    shutil.rmtree(model_dir)  # a fresh run each time: never resume an older one
  gin_config.parse(DEMO_GIN + (gin_file,), [
      f'MODEL_DIR = {quote(model_dir)}', f'RANDOM_SEED = {seed}', f'TRAIN_STEPS = {steps}', f'EVAL_PERIOD = {steps}',
      *bindings
  ])
  start = time.perf_counter()
  result = trainer.train()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  return {
      'method': method, 'seed': seed, 'learning_rate': gin.query_parameter('%LEARNING_RATE'), 'accuracy': float(
          result.eval_metrics['accuracy']), 'loss': float(result.eval_metrics['loss']
                                                         ), 'trainable_params': tree_size(result.trainable)[0],
      'inference_params': tree_size(result.inference)[0] if result.inference is not None else None,
      'seconds': time.perf_counter() - start
  }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  rows = []
  for method, rate in dict.fromkeys((r['method'], r['learning_rate']) for r in runs):
    mine = [r for r in runs if (r['method'], r['learning_rate']) == (method, rate)]
    acc = [r['accuracy'] for r in mine]
    first = mine[0]
    rows.append({
        'method': method, 'learning_rate': rate, 'mean': sum(acc) / len(acc), 'min': min(acc), 'max': max(acc),
        'seeds': len(acc), 'trainable_params': first['trainable_params'], 'inference_params': first['inference_params']
    })
  return rows


def plot(rows: list[dict[str, Any]], path: str, steps: int) -> str:
  """Held-out accuracy (mean, with the seeds' range) against trainable parameters, log x."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for row in rows:
    ax.errorbar([row['trainable_params']], [row['mean']], yerr=[[row['mean'] - row['min']], [row['max'] - row['mean']]],
                marker='o', capsize=4, label=f"{row['method']} (lr {row['learning_rate']:g})")
  ax.set_xscale('log')
  ax.set_xlabel('trainable parameters')
  ax.set_ylabel('held-out accuracy (%)')
  ax.set_ylim(0, 102)
  ax.set_title(f'demo model, held-out topic task, {steps} steps')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--output', default='/tmp/jaxprompt_methods')
  parser.add_argument('--learning_rates', default='',
                      help='overrides, e.g. prefix_tuning=0.3,p_tuning=0.003 (a sweep: one run per value)')
  parser.add_argument('--png', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'methods.png'))
  args = parser.parse_args(argv)
  methods = [m for m in args.methods.split(',') if m]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f'unknown methods {unknown}; expected some of {", ".join(METHODS)}')
  from jaxprompt.cli import console, gin_config  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import (
      GIN_MODULES,  # pylint: disable=g-import-not-at-top
      tasks,  # pylint: disable=g-import-not-at-top
  )
  from jaxprompt.demo import model as demo_model  # pylint: disable=g-import-not-at-top
  gin_config.import_configurables(GIN_MODULES)
  console.quiet_known_noise()
  tasks.register_demo_tasks(demo_model.vocabulary(None))
  rates: dict[str, list[float]] = {}
  for item in filter(None, args.learning_rates.split(',')):
    name, _, value = item.partition('=')
    rates.setdefault(name, []).append(float(value))
  runs = []
  for method in methods:
    for rate in rates.get(method, [None]):
      for seed in (int(s) for s in args.seeds.split(',')):
        runs.append(train_one(method, seed, args.steps, args.output, rate))
      print(f"{method} seed {seed}: {runs[-1]['accuracy']:.1f}% ({runs[-1]['seconds']:.0f} s)", file=sys.stderr,
            flush=True)
  rows = summarise(runs)
  print(f'\nheld-out accuracy after {args.steps} steps (mean [min, max] over seeds {args.seeds}):')
  print(f"{'method':20s} {'lr':>6s} {'trainable':>10s} {'inference':>10s} {'accuracy %':>22s}")
  for r in rows:
    print(f"{r['method']:20s} {r['learning_rate']:6g} {r['trainable_params']:10,d} {r['inference_params'] or 0:10,d} "
          f"{r['mean']:8.1f} [{r['min']:.1f}, {r['max']:.1f}]")
  if args.png:
    print('plot:', plot(rows, args.png, args.steps))
  print('JSON ' + json.dumps({'runs': runs, 'summary': rows, 'steps': args.steps}))
  return rows


if __name__ == '__main__':
  main()
