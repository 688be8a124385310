"""Prompt-tuning ablations after Lester et al. (2021), Figure 3, on the demo model and task.

Prompt length {1, 5, 20, 100} x initialisation {random uniform, sampled vocab, class label}: each cell tunes
a prompt on the frozen demo model (gin_configs/models/demo.gin + runs/demo.gin, i.e. `jaxprompt.train`, only
the length and the prompts/*.gin file change) and reports held-out accuracy on the demo task (raw review ->
topic, rank classification over the 5 labels). Prints a table and draws one plot (accuracy vs length).

  python bench/ablations.py [--quick] [--output DIR] [--steps N] [--seeds 0,1,2]

--quick: 25 steps per cell, 200 validation examples (a couple of minutes on 2 CPU cores).
The budget is deliberately small: the frozen model learns this task fast, so small budgets are where
lengths and initialisations differ.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

LENGTHS = (1, 5, 20, 100)
INITS = {  # name -> gin file placed after runs/demo.gin (None: runs/prompt_tuning.gin's class-label init)
    'random uniform': 'prompts/random_uniform.gin',
    'sampled vocab': 'prompts/sampled_vocab.gin',
    'class label': None,
}
# The demo vocabulary's word pieces (ids 259..767); the byte-fallback pieces below them are not "vocab".
_SAMPLED_VOCAB = ('jaxprompt.methods.sampled_vocab.start = 259',
                  'jaxprompt.methods.sampled_vocab.population_size = 509')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='25 steps per cell, 200 eval examples')
  parser.add_argument('--steps', type=int, default=None, help='prompt-tuning steps per cell (default 60)')
  parser.add_argument('--eval_examples', type=int, default=None, help='validation examples (default: all 500)')
  parser.add_argument('--seeds', default='0', help='comma-separated RANDOM_SEEDs; accuracies are averaged')
  parser.add_argument('--skill', default='topic', choices=('topic', 'sentiment'))
  parser.add_argument('--output', default='/tmp/jaxprompt_ablations', help='runs, table (JSON) and plot')
  return parser.parse_args(argv)


def run_cell(output: str, task: str, length: int, init: str, seed: int, steps: int, eval_examples: int | None) -> float:
  """Held-out accuracy (%) of one prompt tuning run."""
  import gin  # pylint: disable=g-import-not-at-top

  from jaxprompt.cli import gin_config  # pylint: disable=g-import-not-at-top
  from jaxprompt.commands import train as trainer  # pylint: disable=g-import-not-at-top
  model_dir = os.path.join(output, f'{init.replace(" ", "_")}_len{length}_seed{seed}')
  if os.path.isdir(model_dir):
    shutil.rmtree(model_dir)
  files = ['models/demo.gin', 'runs/demo.gin'] + ([INITS[init]] if INITS[init] else [])
  bindings = [
      f'MODEL_DIR = {gin_config.quote(model_dir)}', f'MIXTURE_OR_TASK_NAME = {gin_config.quote(task)}',
      f'PROMPT_LENGTH = {length}', f'TRAIN_STEPS = {steps}', f'EVAL_PERIOD = {steps}', f'RANDOM_SEED = {seed}',
      *_SAMPLED_VOCAB
  ]
  if eval_examples:
    bindings.append(f'EVAL_MAX_EXAMPLES = {eval_examples}')
  gin_config.parse(files, bindings)
  gin.bind_parameter('jaxprompt.train.progress_bar', False)
  result = trainer.train()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  return float(result.eval_metrics['accuracy'])


def plot(path: str, table: dict[str, dict[int, float]], frozen: float, title: str) -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for (init, row), marker in zip(table.items(), 'osD'):
    ax.plot(list(row), list(row.values()), marker=marker, label=init)
  ax.axhline(frozen, linestyle='--', color='gray', label='frozen model, no prompt')
  ax.set_xscale('log')
  ax.set_xticks(LENGTHS)
  ax.set_xticklabels([str(n) for n in LENGTHS])
  ax.set_xlabel('prompt length (tokens)')
  ax.set_ylabel('held-out accuracy (%)')
  ax.set_ylim(0, 102)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def format_table(table: dict[str, dict[int, float]], frozen: float) -> str:
  lines = ['init \\ length   ' + ''.join(f'{n:>8d}' for n in LENGTHS)]
  for init, row in table.items():
    lines.append(f'{init:<16s}' + ''.join(f'{row[n]:8.1f}' for n in LENGTHS))
  lines.append(f'(frozen model, no prompt: {frozen:.1f}; held-out accuracy in %, rank classification)')
  return '\n'.join(lines)


def main(argv=None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  args = parse_args(sys.argv[1:] if argv is None else argv)
  steps = args.steps or (25 if args.quick else 60)
  eval_examples = args.eval_examples or (200 if args.quick else None)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  from jaxprompt.cli import console, gin_config  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import GIN_MODULES  # pylint: disable=g-import-not-at-top
  gin_config.import_configurables(GIN_MODULES)
  console.quiet_known_noise()
  from jaxprompt.demo import run as demo_run  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.heldout_task_name(args.skill)
  os.makedirs(args.output, exist_ok=True)
  start = time.time()
  gin_config.parse(['models/demo.gin', 'runs/demo.gin'], [f'MIXTURE_OR_TASK_NAME = {gin_config.quote(task)}'])
  frozen = demo_run.frozen_accuracy(task, eval_examples)
  table: dict[str, dict[int, float]] = {}
  for init in INITS:
    table[init] = {}
    for length in LENGTHS:
      accuracies = [run_cell(args.output, task, length, init, seed, steps, eval_examples) for seed in seeds]
      table[init][length] = sum(accuracies) / len(accuracies)
      print(f'{init:>15s}  length {length:3d}: {table[init][length]:5.1f}%  ({time.time() - start:.0f} s)', flush=True)
  title = f'{task}, {steps} steps, seeds {",".join(map(str, seeds))}'
  path = plot(os.path.join(args.output, 'ablations.png'), table, frozen, title)
  with open(os.path.join(args.output, 'ablations.json'), 'w') as f:
    json.dump(
        {
            'task': task, 'steps': steps, 'seeds': seeds, 'eval_examples': eval_examples, 'frozen': frozen,
            'accuracy': {init: {str(n): v for n, v in row.items()} for init, row in table.items()}
        }, f, indent=1)
  print(format_table(table, frozen))
  print(f'plot: {path}   ({time.time() - start:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
