"""`jaxprompt demo`: prompt tuning at work on a laptop CPU in a few minutes.

The frozen demo model (a small T5 1.1 that jaxprompt pretrained itself, shipped in the package; with
`--family causal`, a tiny Llama pretrained the same way and shipped as a Hugging Face folder) knows how to
classify a review's topic when asked `topic: <review>`. Shown the raw review with no instruction, it reads it
as text to continue and is at or near chance. The demo
  1. scores the frozen model, without any prompt, on the held-out formulation (raw review -> topic);
  2. tunes a soft prompt on it (`jaxprompt.train`, gin_configs/models/demo.gin or demo_causal.gin + runs/demo.gin:
     the same trainer, seqio task, gin files and checkpoints as any run) and exports `prompt.npy`;
  3. tunes every weight on the same data as a baseline (`jaxprompt.train_model`, runs/demo_model_tuning.gin);
  4. prints the three held-out accuracies and the quality bar (prompt tuning >= 90% of model tuning and >= 40
     points above the frozen model), and draws the accuracy curves (demo_curve.png).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

from jaxprompt.cli import compilation_cache, console
from jaxprompt.cli import parser as cli_parser
from jaxprompt.cli.gin_config import quote
from jaxprompt.demo import GIN_MODULES, data, families
from jaxprompt.formats import fingerprint_files
from jaxprompt.formats.keys import PROMPT_FILE

PROG = 'jaxprompt demo'
PROMPT_RUN_GIN = 'runs/demo.gin'  # after the family's models/*.gin
MODEL_TUNING_RUN_GIN = 'runs/demo_model_tuning.gin'
CURVE_FILE = 'demo_curve.png'
SUMMARY_FILE = 'demo_results.json'
# The quality bar of the demo (issue: prompt tuning vs model tuning vs the untuned frozen model).
MIN_FRACTION_OF_MODEL_TUNING = 0.9
MIN_POINTS_ABOVE_FROZEN = 40.0


@dataclasses.dataclass
class DemoResult:
  """Held-out accuracies in percent (rank classification over the label set) and where things were written."""
  task: str
  frozen_accuracy: float
  prompt_accuracy: float
  model_accuracy: float | None
  prompt_file: str
  curve_file: str | None
  seconds: float
  family: str = 't5'  # the demo model's family (`demo.families`)

  @property
  def meets_quality_bar(self) -> bool | None:
    if self.model_accuracy is None:
      return None
    return (self.prompt_accuracy >= MIN_FRACTION_OF_MODEL_TUNING * self.model_accuracy and
            self.prompt_accuracy >= self.frozen_accuracy + MIN_POINTS_ABOVE_FROZEN)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--output', default='jaxprompt_demo', help='folder for prompt.npy, curves and runs')
  parser.add_argument('--family', default='t5', choices=families.demo_families(),
                      help='the frozen demo model: t5 (a small T5 1.1) or causal (a tiny Llama, decoder-only)')
  parser.add_argument('--skill', default='topic', choices=data.HELDOUT_SKILLS,
                      help='the classification skill presented without its instruction')
  parser.add_argument('--steps', type=int, default=None, help='prompt-tuning steps (TRAIN_STEPS of runs/demo.gin)')
  parser.add_argument('--baseline_steps', type=int, default=None,
                      help='model-tuning steps (TRAIN_STEPS of runs/demo_model_tuning.gin)')
  parser.add_argument('--eval_period', type=int, default=None, help='steps between held-out evaluations')
  parser.add_argument('--eval_examples', type=int, default=None,
                      help='score only the first N validation examples (default: all 500)')
  parser.add_argument('--prompt_length', type=int, default=None, help='PROMPT_LENGTH of runs/demo.gin')
  parser.add_argument('--no_baseline', action='store_true', help='skip the model-tuning baseline')
  parser.add_argument('--model', default=None, help='a demo model dir (default: the one shipped in the package)')
  parser.add_argument('--seed', type=int, default=None, help='RANDOM_SEED (prompt init and data order)')
  return parser


def _common_bindings(args: argparse.Namespace, task: str) -> list[str]:
  bindings = [f'MIXTURE_OR_TASK_NAME = {quote(task)}']
  if args.seed is not None:
    bindings.append(f'RANDOM_SEED = {args.seed}')
  if args.eval_period is not None:
    bindings.append(f'EVAL_PERIOD = {args.eval_period}')
  if args.eval_examples is not None:
    bindings.append(f'EVAL_MAX_EXAMPLES = {args.eval_examples}')
  if args.model is not None:
    bindings.append(f'DEMO_MODEL_DIR = {quote(os.path.abspath(args.model))}')
  return bindings


def _fresh_dir(path: str) -> str:
  """The demo's own run dir, emptied: a previous demo's checkpoints would otherwise be resumed."""
  if os.path.isdir(path):
    shutil.rmtree(path)
  os.makedirs(path)
  return path


def _say(text: str) -> None:
  print(text, flush=True)


def frozen_accuracy(task: str, max_examples: int | None = None, family: str = 't5') -> float:
  """Held-out accuracy of the frozen model with NO prompt, configured by the parsed demo gin files."""
  import gin  # pylint: disable=g-import-not-at-top

  from jaxprompt.checkpoints import readers  # pylint: disable=g-import-not-at-top
  from jaxprompt.eval import evaluation  # pylint: disable=g-import-not-at-top
  model = families.get(family)
  config = model.model_config()  # gin binds the model dir (DEMO_MODEL_DIR)
  params = readers.load(model.checkpoint(), config)
  lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
  batch = gin.query_parameter('%BATCH_SIZE')
  metrics = evaluation.evaluate_network(config, params, task, 'validation', lengths, batch, max_examples=max_examples)
  return float(metrics['accuracy'])


def _read_history(model_dir: str) -> list[tuple[int, float]]:
  path = os.path.join(model_dir, 'eval_metrics.jsonl')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r['step'], r['accuracy']) for r in rows if r.get('accuracy') is not None]


def plot_curves(path: str, frozen: float, prompt_dir: str, model_dir: str | None, task: str) -> str:
  """Held-out accuracy against the step: prompt tuning, model tuning and the frozen model (dashed)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for label, run_dir, marker in (('prompt tuning (frozen model)', prompt_dir, 'o'), ('model tuning (all weights)',
                                                                                     model_dir, 's')):
    # Step 0 of model tuning IS the frozen model; prompt tuning's step 0 already has the initial prompt.
    points = (([(0, frozen)] if run_dir == model_dir else []) + _read_history(run_dir)) if run_dir else []
    if points:
      ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
  ax.axhline(frozen, linestyle='--', color='gray', label='frozen model, no prompt')
  ax.set_xlabel('training step')
  ax.set_ylabel('held-out accuracy (%)')
  ax.set_ylim(0, 102)
  ax.set_title(f'{task}: raw review, no instruction')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def run_demo(args: argparse.Namespace, overrides: Sequence[str] = ()) -> DemoResult:
  """The whole demo (see the module docstring); `overrides` are extra gin bindings for both runs."""
  start = time.time()
  from jaxprompt.cli import gin_config  # pylint: disable=g-import-not-at-top  (imports TF, seqio, jax)
  gin_config.import_configurables(GIN_MODULES)
  console.quiet_known_noise()
  from jaxprompt.commands import train as trainer  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import tasks  # pylint: disable=g-import-not-at-top
  family = families.get(args.family)
  # (Re-)register the demo tasks with this model's vocabulary (another may have been registered before).
  tasks.register_demo_tasks(family.vocabulary(None if args.model is None else os.path.abspath(args.model)))
  task = tasks.heldout_task_name(args.skill)
  output = os.path.abspath(args.output)
  os.makedirs(output, exist_ok=True)
  common = _common_bindings(args, task) + list(overrides)

  prompt_dir = _fresh_dir(os.path.join(output, 'prompt_tuning'))
  prompt_bindings = [f'MODEL_DIR = {quote(prompt_dir)}'] + common
  if args.steps is not None:
    prompt_bindings.append(f'TRAIN_STEPS = {args.steps}')
  if args.prompt_length is not None:
    prompt_bindings.append(f'PROMPT_LENGTH = {args.prompt_length}')
  gin_config.parse((family.model_gin, PROMPT_RUN_GIN), prompt_bindings)

  _say(f'[1/3] frozen demo model, no prompt, on {task} (raw review, no instruction) ...')
  frozen = frozen_accuracy(task, args.eval_examples, args.family)
  _say(f'      held-out accuracy of the frozen model: {frozen:.1f}%  (elapsed {time.time() - start:.0f} s)')

  _say('[2/3] prompt tuning: the model stays frozen, only the soft prompt trains ...')
  result = trainer.train()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  prompt_accuracy = float(result.eval_metrics['accuracy'])
  prompt_file = os.path.join(output, PROMPT_FILE)
  shutil.copyfile(result.prompt_file, prompt_file)
  if os.path.exists(fingerprint_files.sidecar_path(result.prompt_file)):  # the frozen model it belongs to
    shutil.copyfile(fingerprint_files.sidecar_path(result.prompt_file), fingerprint_files.sidecar_path(prompt_file))
  shape = result.prompt.shape
  _say(f'      held-out accuracy after prompt tuning: {prompt_accuracy:.1f}% (prompt {shape[0]} x {shape[1]}, '
       f'{result.step} steps; elapsed {time.time() - start:.0f} s)')

  model_accuracy, model_dir = None, None
  if not args.no_baseline:
    _say('[3/3] model tuning baseline: every weight trains on the same data ...')
    model_dir = _fresh_dir(os.path.join(output, 'model_tuning'))
    model_bindings = [f'MODEL_DIR = {quote(model_dir)}'] + common
    if args.baseline_steps is not None:
      model_bindings.append(f'TRAIN_STEPS = {args.baseline_steps}')
    gin_config.parse((family.model_gin, MODEL_TUNING_RUN_GIN), model_bindings)
    baseline = trainer.train_model()  # pylint: disable=no-value-for-parameter
    model_accuracy = float(baseline.eval_metrics['accuracy'])
    _say(f'      held-out accuracy after model tuning: {model_accuracy:.1f}%  (elapsed {time.time() - start:.0f} s)')

  curve = plot_curves(os.path.join(output, CURVE_FILE), frozen, prompt_dir, model_dir, task)
  demo = DemoResult(task, frozen, prompt_accuracy, model_accuracy, prompt_file, curve, time.time() - start, args.family)
  with open(os.path.join(output, SUMMARY_FILE), 'w') as f:
    f.write(json.dumps(dict(dataclasses.asdict(demo), meets_quality_bar=demo.meets_quality_bar), indent=1) + '\n')
  return demo


def report(demo: DemoResult) -> str:
  """The summary table and the quality bar, as printed at the end of the demo."""
  lines = [
      f'held-out task {demo.task}, {demo.family} demo model (accuracy, rank classification over the labels):',
      f'  frozen model, no prompt        {demo.frozen_accuracy:6.1f}%',
      f'  prompt tuning (model frozen)   {demo.prompt_accuracy:6.1f}%', '  model tuning (all weights)     ' +
      (f'{demo.model_accuracy:6.1f}%' if demo.model_accuracy is not None else '  skipped')
  ]
  if demo.model_accuracy is not None:
    ratio = demo.prompt_accuracy / max(demo.model_accuracy, 1e-9)
    gain = demo.prompt_accuracy - demo.frozen_accuracy
    verdict = 'MET' if demo.meets_quality_bar else 'NOT MET'
    lines.append(f'quality bar {verdict}: prompt tuning = {100 * ratio:.0f}% of model tuning (>= '
                 f'{100 * MIN_FRACTION_OF_MODEL_TUNING:.0f}%), {gain:+.1f} points over the frozen model (>= '
                 f'+{MIN_POINTS_ABOVE_FROZEN:.0f})')
  lines.append(f'prompt: {demo.prompt_file}   curves: {demo.curve_file}   time: {demo.seconds:.0f} s')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of `jaxprompt demo [--output DIR] [--steps N] ... [--gin.NAME=VALUE]`; returns the exit code
  (0, also when the quality bar is not met: the table says so; 2 on a configuration or data error)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  argv = list(sys.argv[1:] if argv is None else argv)

  def demo_command() -> int:
    rest, overrides = cli_parser.split_gin_overrides(argv)
    args = build_parser().parse_args(rest)
    with compilation_cache.configured(None):  # JAXPROMPT_COMPILATION_CACHE, else the user cache dir
      print(report(run_demo(args, overrides)), flush=True)
    return 0

  return console.run_reporting_errors(demo_command, prog=PROG)


if __name__ == '__main__':
  sys.exit(main())
