"""Encoder quality: P-tuning v2 + head against input prompt tuning + head, the whole encoder + head (model tuning)
and the head alone on the frozen encoder, on the shipped demo encoder's two held-out tasks, over seeds.

The encoder is `jaxprompt/assets/demo_encoder_model` (a tiny BERT the package pretrained with masked LM); the tasks
are `demo/encoder_tasks`' review classification (10 labels, accuracy) and BIO tagging (entity span F1), 2000
training and 500 validation examples each, read back as files (`bench/encoder_tasks.py`). Every run trains through
the package's own path (`runtime.build_runtime`'s compiled train step inside `train.loop.run`, a checkpoint at the
end) with the same steps, batch and head, seeded (the method's and the head's draws, dropout and the batch order),
and is scored on the whole validation split with `EncoderOnlyModel.predict_labels`. It prints a table (mean ± std
over seeds), writes a PNG and a JSON of every run. From the repo root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/encoder_quality.py            # 3 seeds x 300 steps: ~15 min here
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/encoder_quality.py --quick    # 1 seed, 6 steps, small splits

Options: `--methods`, `--tasks`, `--seeds 0,1,2`, `--steps`, `--batch`, `--learning_rates name=value,...`, `--png`,
`--json`, `--work` (the task files and run directories).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (after the path and the log level)

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = 16  # prompt rows (prompt tuning) and prefix rows per layer (P-tuning v2): the same count for both
HEAD_DROPOUT = 0.1  # transformers' BERT classifier dropout (the hidden dropout), the same head for every method
EVAL_BATCH = 100


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A bench method: its label, its inner method for a config (None: the head alone), its Adam learning rate and
  where that rate comes from."""
  label: str
  inner: Callable[[Any], Any]
  learning_rate: float
  why: str


def _p_tuning_v2(config):
  from jaxprompt.methods.prefix_tuning import p_tuning_v2  # pylint: disable=g-import-not-at-top
  return p_tuning_v2(config, length=ROWS, dropout=0.1)


def _prompt_tuning(config):
  from jaxprompt.methods.prompt_tuning import prompt_tuning  # pylint: disable=g-import-not-at-top
  return prompt_tuning(config, length=ROWS)


def _model_tuning(config):
  from jaxprompt.methods.model_tuning import ModelTuning  # pylint: disable=g-import-not-at-top
  del config
  return ModelTuning()


METHODS = {
    'p_tuning_v2': MethodSpec('P-tuning v2 + head', _p_tuning_v2, 1e-2,
                              "THUDM's BERT / RoBERTa scripts: AdamW 5e-3 to 2e-2, prefix dropout 0.1, plain rows"),
    'prompt_tuning': MethodSpec('prompt tuning + head', _prompt_tuning, 3e-2,
                                "PEFT's prompt-tuning examples (Adam 3e-2); Lester et al.'s 0.3 is Adafactor on T5"),
    'model_tuning': MethodSpec('whole encoder + head', _model_tuning, 1e-4,
                               'Turc et al.\'s small BERTs: Adam, best of {1e-4, 5e-5, 3e-5} (Devlin et al.\'s grid)'),
    'head_only': MethodSpec('head alone (frozen)', lambda config: None, 1e-2,
                            'a linear probe: the head at the frozen-encoder methods\' rate'),
}


def batches(features: dict[str, np.ndarray], batch: int, seed: int) -> Callable[[int], Iterator[dict]]:
  """`loop.run`'s seeded stream: epochs of a fresh permutation each, `batch` rows a step, the first `skip` dropped."""

  def stream(skip: int) -> Iterator[dict]:
    rng, n, produced = np.random.default_rng(seed), len(next(iter(features.values()))), 0
    while True:
      order = rng.permutation(n)
      for start in range(0, n - batch + 1, batch):
        if produced >= skip:
          yield {k: v[order[start:start + batch]] for k, v in features.items()}
        produced += 1

  return stream


def chunks(features: dict[str, np.ndarray], size: int) -> Iterator[tuple[dict, int]]:
  """(rows padded to `size` with all-padding rows, real rows) of a split, in order."""
  n = len(features['encoder_input_mask'])
  for start in range(0, n, size):
    part = {k: v[start:start + size] for k, v in features.items()}
    real = len(part['encoder_input_mask'])
    pad = lambda v: np.concatenate([v, np.zeros((size - real, *v.shape[1:]), v.dtype)])  # noqa: E731 mask 0: no weight
    yield {k: pad(v) for k, v in part.items()}, real


def fresh_copy(network: Any) -> Any:
  """The host network's arrays copied into new device buffers (a donating step never touches the host's)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: jnp.array(x, copy=True), network)


class Runner:
  """One task and method: the runtime (compiled once) and its train / evaluate calls, one per seed."""

  def __init__(self, task, method: str, network: Any, config: Any, steps: int, batch: int, learning_rate: float):
    import jax  # pylint: disable=g-import-not-at-top

    from jaxprompt.methods.with_head import WithHead  # pylint: disable=g-import-not-at-top
    from jaxprompt.models.heads import HeadConfig  # pylint: disable=g-import-not-at-top
    from jaxprompt.runtime.optim import adam, make_optimizer  # pylint: disable=g-import-not-at-top
    from jaxprompt.runtime.runtime import build_runtime  # pylint: disable=g-import-not-at-top
    from jaxprompt.train.schedule import Schedule  # pylint: disable=g-import-not-at-top
    self.task, self.steps, self.batch = task, steps, batch
    head = HeadConfig(task.name, len(task.labels), use_pooler=False, dropout=HEAD_DROPOUT)
    self.method = WithHead.for_config(config, METHODS[method].inner(config), head)
    self.optimizer = make_optimizer(adam, learning_rate)
    length = next(iter(task.train.values())).shape[1]
    self.network = network
    self.runtime = build_runtime(config, self.method, None, {'inputs': length, 'targets': 1}, optimizer=self.optimizer,
                                 network=fresh_copy(network))
    self.schedule = Schedule(train_steps=steps, eval_period=steps, checkpoint_period=steps,
                             log_period=max(steps // 5, 1))
    self.predict = jax.jit(self.runtime.model.predict_labels)

  def evaluate(self, trainable: Any) -> tuple[dict[str, float], float]:
    """(the task's scores of the validation split, its mean loss per label)."""
    steps, predicted, loss, weight = self.runtime.steps, [], 0.0, 0.0
    for rows, real in chunks(self.task.validation, EVAL_BATCH):
      predicted.append(np.asarray(self.predict(self.runtime.frozen, trainable, rows)[0])[:real])
      metrics = steps.eval_step(self.runtime.frozen, trainable, steps.shard_batch(rows))
      loss, weight = loss + float(metrics['loss']), weight + float(metrics['weight_sum'])
    return self.task.score(np.concatenate(predicted)), loss / max(weight, 1.0)

  def run(self, seed: int, model_dir: str) -> dict[str, Any]:
    """Trains from `seed` for the budget (a fresh run in `model_dir`) and scores it."""
    from jaxprompt.train import loop  # pylint: disable=g-import-not-at-top
    from jaxprompt.train.checkpoints import StateCheckpointer  # pylint: disable=g-import-not-at-top
    if self.method.trains_network:  # model tuning's state starts as the runtime's network, which the step donates
      self.runtime = dataclasses.replace(self.runtime, network=fresh_copy(self.network))
    state = loop.initial_state(self.runtime, self.optimizer, seed=seed)
    _, loss_before = self.evaluate(state.trainable)
    start = time.perf_counter()
    with StateCheckpointer(model_dir) as checkpointer:
      result = loop.run(self.runtime, state, checkpointer, model_dir=model_dir, batch_size=self.batch,
                        batches=batches(self.task.train, self.batch,
                                        seed), schedule=self.schedule, progress_bar=False, task_name=self.task.name)
    seconds = time.perf_counter() - start
    scores, loss_after = self.evaluate(result.state.trainable)
    return {
        'task': self.task.name, 'seed': seed, 'steps': result.step, 'metric': self.task.metric,
        'value': scores[self.task.metric], 'scores': scores, 'validation_loss_before': loss_before,
        'validation_loss_after': loss_after, 'trainable_params': loop.tree_size(result.state.trainable)
                                                                 [0], 'train_seconds': seconds
    }


def separability(task, network: Any, config: Any) -> dict[str, float]:
  """How far the frozen encoder's first-row output (what a sequence head reads) tells a classification task's
  labels apart: the spread of the class means over the mean spread within a class (per dimension), and the
  held-out accuracy of the nearest class mean (the chance level is 100 / labels)."""
  from jaxprompt.models import families  # pylint: disable=g-import-not-at-top
  module = families.build_model(config).module

  def first_rows(split: dict[str, np.ndarray]) -> np.ndarray:
    hidden, _ = module.apply({'params': network}, split['encoder_input_tokens'], valid=split['encoder_input_mask'] > 0,
                             token_types=split['encoder_token_types'])
    return np.asarray(hidden)[:, 0]

  x, y = first_rows(task.train), task.train['labels']
  means = np.stack([x[y == c].mean(0) for c in range(len(task.labels))])
  within = np.mean([x[y == c].std(0).mean() for c in range(len(task.labels))])
  held_out = first_rows(task.validation)
  nearest = np.argmin(((held_out[:, None] - means[None])**2).sum(-1), 1)
  return {
      'between_over_within': float(means.std(0).mean() / within),
      'nearest_mean_accuracy': 100.0 * float(np.mean(nearest == task.validation['labels'])),
      'chance': 100.0 / len(task.labels)
  }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean, sample std (0 for one seed), min and max of each (task, method)'s metric over its seeds."""
  rows = []
  for task, method in dict.fromkeys((r['task'], r['method']) for r in runs):
    mine = [r for r in runs if (r['task'], r['method']) == (task, method)]
    values = [r['value'] for r in mine]
    rows.append({
        'task': task, 'method': method, 'metric': mine[0]['metric'], 'learning_rate': mine[0]['learning_rate'],
        'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
        'min': min(values), 'max': max(values), 'seeds': len(values), 'trainable_params': mine[0]['trainable_params']
    })
  return rows


def table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
  """Methods down, tasks across: `mean ± std` and the trainable parameters."""
  by = {(r['method'], r['task']): r for r in rows}
  methods = list(dict.fromkeys(r['method'] for r in rows))
  heads = [f"{t} ({by[next((m, t) for m in methods if (m, t) in by)]['metric']} %)" for t in tasks]
  lines = [f"{'method':24s} {'Adam lr':>8s} " + ' '.join(f'{h:>26s}' for h in heads)]
  for m in methods:
    cells = []
    for t in tasks:
      r = by.get((m, t))
      cells.append(f"{r['mean']:6.1f} ± {r['std']:4.1f} ({r['trainable_params']:>9,d} p)" if r else '')
    rate = next(r['learning_rate'] for r in rows if r['method'] == m)
    lines.append(f'{METHODS[m].label:24s} {rate:8g} ' + ' '.join(f'{c:>26s}' for c in cells))
  return '\n'.join(lines)


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], path: str, title: str,
         chance: dict[str, float] | None = None) -> str:
  """One panel per task: each method's mean (bar) ± std, every seed's value (dots), and the task's `chance` level
  (dashed) where it has one."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  fig = Figure(figsize=(5.0 * len(tasks), 4.2))
  FigureCanvasAgg(fig)
  for i, task in enumerate(tasks):
    ax = fig.add_subplot(1, len(tasks), i + 1)
    mine = [r for r in rows if r['task'] == task]
    x = np.arange(len(mine))
    ax.bar(x, [r['mean'] for r in mine], yerr=[r['std'] for r in mine], capsize=4, color='#8fb3d9')
    for j, r in enumerate(mine):
      values = [run['value'] for run in runs if (run['task'], run['method']) == (task, r['method'])]
      ax.plot([j] * len(values), values, 'k.', alpha=0.7)
    if task in (chance or {}):
      ax.axhline(chance[task], color='0.4', linestyle='--', linewidth=1, label=f'chance ({chance[task]:.0f}%)')
      ax.legend(loc='upper right', fontsize='small')
    ticks = [METHODS[r['method']].label.replace(' + ', '\n+ ').replace(' (', '\n(') for r in mine]
    ax.set_xticks(x, ticks, fontsize='small')
    ax.set_ylabel(f"held-out {mine[0]['metric'].replace('_', ' ')} (%)")
    ax.set_ylim(0, 102)
    ax.set_title(task)
    ax.grid(axis='y', alpha=0.3)
  fig.suptitle(title, fontsize='medium')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def _rates(text: str, parser: argparse.ArgumentParser) -> dict[str, float]:
  rates = {}
  for item in filter(None, text.split(',')):
    name, _, value = item.partition('=')
    if name not in METHODS:
      parser.error(f'--learning_rates: unknown method {name!r}; expected some of {", ".join(METHODS)}')
    rates[name] = float(value)
  return rates


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--tasks', default='classification,tagging')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--learning_rates', default='', help='overrides, e.g. prompt_tuning=0.1,model_tuning=3e-4')
  parser.add_argument('--quick', action='store_true', help='1 seed, 6 steps, 64 training / 50 validation examples')
  parser.add_argument('--png', default=os.path.join(HERE, 'encoder_quality.png'))
  parser.add_argument('--json', default=os.path.join(HERE, 'encoder_quality.json'))
  parser.add_argument('--work', default=None, help='task files and run directories (default: a temporary one)')
  args = parser.parse_args(argv)
  methods, tasks = args.methods.split(','), args.tasks.split(',')
  for given, known, flag in ((methods, METHODS, '--methods'), (tasks, ('classification', 'tagging'), '--tasks')):
    if not given or set(given) - set(known):
      parser.error(f'{flag}: expected some of {", ".join(known)}, got {",".join(given)}')
  seeds = [int(s) for s in args.seeds.split(',')]
  steps, sizes = args.steps, None
  if args.quick:
    seeds, steps, sizes = seeds[:1], 6, {'train': 64, 'validation': 50}
  rates = {m: METHODS[m].learning_rate for m in METHODS} | _rates(args.learning_rates, parser)

  from bench.encoder_tasks import held_out_tasks  # pylint: disable=g-import-not-at-top
  from jaxprompt.checkpoints.hf_encoder import load_hf_encoder  # pylint: disable=g-import-not-at-top
  from jaxprompt.cli import console  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import encoder_model  # pylint: disable=g-import-not-at-top
  console.quiet_known_noise()
  network, config = load_hf_encoder(encoder_model.encoder_model_dir())
  with tempfile.TemporaryDirectory(prefix='encoder_quality_') as scratch:
    work = args.work or scratch
    held_out = held_out_tasks(os.path.join(work, 'tasks'), sizes)
    runs, start = [], time.perf_counter()
    for task in tasks:
      for method in methods:
        runner = Runner(held_out[task], method, network, config, steps, args.batch, rates[method])
        for seed in seeds:
          run = runner.run(seed, os.path.join(work, 'runs', f'{task}_{method}_seed{seed}'))
          runs.append({'method': method, 'learning_rate': rates[method], **run})
          print(
              f"{task} {method} seed {seed}: {run['metric']} {run['value']:.1f}% "
              f"(loss {run['validation_loss_before']:.3f} -> {run['validation_loss_after']:.3f}, "
              f"{run['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
  rows = summarise(runs)
  probe = separability(held_out['classification'], network, config) if 'classification' in tasks else None
  print(f'\nheld-out scores after {steps} steps of {args.batch} (mean ± std over seeds {",".join(map(str, seeds))}; '
        f'p = trainable parameters):')
  print(table(rows, tasks))
  if probe:
    print("the frozen encoder's first row on classification: class-mean spread / within-class spread "
          f"{probe['between_over_within']:.3f}, nearest class mean {probe['nearest_mean_accuracy']:.1f}% "
          f"(chance {probe['chance']:.0f}%)")
  setup = {
      'model': 'jaxprompt/assets/demo_encoder_model', 'steps': steps, 'batch': args.batch, 'seeds': seeds, 'rows': ROWS,
      'head_dropout': HEAD_DROPOUT, 'optimizer': 'adam (constant rate)', 'quick': args.quick, 'learning_rates': {
          m: {'value': rates[m], 'why': METHODS[m].why} for m in methods
      }, 'total_seconds': time.perf_counter() - start
  }
  out = {'setup': setup, 'summary': rows, 'runs': runs, 'frozen_first_row': probe}
  if args.png:
    title = f'demo encoder (tiny BERT), {steps} steps of {args.batch}, {len(seeds)} seed(s)'
    chance = {t: 100.0 / len(held_out[t].labels) for t in tasks if t == 'classification'}  # accuracy's chance level
    print('plot:', plot(runs, rows, args.png, title, chance))
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(out, f, indent=1)
    print('runs:', args.json)
  return out


if __name__ == '__main__':
  main()
