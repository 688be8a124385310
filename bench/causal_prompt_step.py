"""Prompt tuning a causal LM: the prompt computed once per batch vs in every row vs Hugging Face PEFT (CPU, float32).

On one small Llama-shaped model (random weights, `bench/causal_prompt_modes.py`), SST-2-like inputs (~30 tokens)
and a 100-token prompt, side by side in one process:
  train  prompt-tuning training tokens/s: (a) ours, the prompt once per batch; (b) ours, the prompt in every row
         (`DecoderOnlyModel(prompt_once=False)`); (c) PEFT CAUSAL_LM prompt tuning, each batch padded to its longest
  rank   rank classification between 2 labels, examples/s: ours (once / in every row) vs PEFT scoring each label
         with one forward of inputs + label
The modes are interleaved batch by batch (each batch served by every mode in turn, the order rotating), so they
meet the same share of the machine's other load; a mode's time is the sum over the batches of its best round.
Compiles and a first PEFT call are warm-up, not timed. Run from the repo root (needs torch, transformers, peft):

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/causal_prompt_step.py            # the README figures
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/causal_prompt_step.py --quick    # a tiny model, seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `bench` as a package

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import causal_prompt_modes as modes_lib  # noqa: E402

TARGETS = {'train': 2.0, 'rank': 2.0}  # ours (prompt once) over PEFT


def interleaved(modes: dict[str, Callable[[int], Any]], count: int, rounds: int) -> tuple[dict, list[float]]:
  """Per mode, per batch, the wall and process-CPU seconds of each round; the 1-minute load average read before
  every round and at the end."""
  names = list(modes)
  times = {n: {'wall': np.full((rounds, count), np.nan), 'cpu': np.full((rounds, count), np.nan)} for n in names}
  load = []
  for r in range(rounds):
    load.append(os.getloadavg()[0])
    for i in range(count):
      k = (i + r) % len(names)
      for name in names[k:] + names[:k]:
        wall, cpu = time.perf_counter(), time.process_time()
        modes[name](i)
        times[name]['wall'][r, i] = time.perf_counter() - wall
        times[name]['cpu'][r, i] = time.process_time() - cpu
  load.append(os.getloadavg()[0])
  return times, load


def totals(times: dict) -> dict[str, dict[str, float]]:
  """Per mode and clock: the sum over batches of the best round."""
  return {n: {c: float(np.sum(np.min(t[c], axis=0))) for c in ('wall', 'cpu')} for n, t in times.items()}


def warm_up(ours: dict[str, modes_lib.Ours], step: Callable[[modes_lib.Ours, int], Any],
            feats: Sequence[dict]) -> float:
  """Calls every jaxprompt mode once on each distinct batch shape (its compile); returns the seconds taken."""
  start = time.perf_counter()
  firsts = {shapes(f): i for i, f in reversed(list(enumerate(feats)))}
  for mode in ours.values():
    for i in sorted(firsts.values()):
      step(mode, i)
  return time.perf_counter() - start


def shapes(batch: dict) -> tuple:
  """A batch's array shapes, in `Ours`' compile-key order."""
  return tuple(np.shape(a) for a in jax.tree.leaves(batch))


def train_part(spec: modes_lib.Spec, ours: dict[str, modes_lib.Ours], peft: modes_lib.Peft | None,
               threads: Sequence[int], rounds: int) -> dict[str, Any]:
  data = modes_lib.batches(spec, spec.train_batches, seed=0)
  feats = [modes_lib.train_features(spec, rows) for rows in data]
  first = {name: mode.loss(feats[0]) for name, mode in ours.items()}  # before any update: must agree
  if peft is not None:
    first['peft'] = peft.loss(data[0])
  warm = warm_up(ours, lambda m, i: m.train(feats[i]), feats)
  modes: dict[str, Callable[[int], Any]] = {name: (lambda i, m=mode: m.train(feats[i])) for name, mode in ours.items()}
  if peft is not None:
    peft.train(data[0], threads[0])
    modes.update({f'peft_{t}t': (lambda i, t=t: peft.train(data[i], t)) for t in threads})
  times, load = interleaved(modes, len(data), rounds)
  tokens = sum(modes_lib.real_tokens(spec, rows) for rows in data)
  widths = [f['decoder_input_tokens'].shape[1] for f in feats]
  rows = {  # positions through the layers per example
      'once': (spec.prompt * len(data) + spec.batch * sum(widths)) / (spec.batch * len(data)),
      'naive': spec.prompt + float(np.mean(widths)),
      'peft': spec.prompt + float(np.mean([max(len(modes_lib.stream(spec, r)[0]) for r in b) for b in data]))
  }
  gflop = {
      name: sum(mode.flops[('train',) + shapes(f)] for f in feats) / len(feats) / 1e9 for name, mode in ours.items()
  }
  return dict(times=times, load=load, total=totals(times), units=tokens, first_loss=first, warm_s=warm, rows=rows,
              gflop=gflop, widths=widths)


def rank_part(spec: modes_lib.Spec, ours: dict[str, modes_lib.Ours], peft: modes_lib.Peft | None,
              threads: Sequence[int], rounds: int) -> dict[str, Any]:
  data = modes_lib.batches(spec, spec.rank_batches, seed=1)
  feats = [modes_lib.rank_features(spec, rows) for rows in data]
  candidates = np.asarray(spec.label_ids, np.int32)
  results: dict[str, list] = {}

  def keep(name: str, i: int, scores: np.ndarray) -> None:
    results.setdefault(name, [None] * len(data))[i] = scores

  warm = warm_up(ours, lambda m, i: m.rank(feats[i], candidates), feats)
  modes: dict[str, Callable[[int], Any]] = {
      name: (lambda i, n=name, m=mode: keep(n, i, m.rank(feats[i], candidates))) for name, mode in ours.items()
  }
  if peft is not None:
    peft.reset()  # training moved its prompt
    peft.rank(data[0], threads[0])
    modes.update({f'peft_{t}t': (lambda i, t=t: keep(f'peft_{t}t', i, peft.rank(data[i], t))) for t in threads})
  times, load = interleaved(modes, len(data), rounds)
  return dict(times=times, load=load, total=totals(times), units=spec.batch * len(data), agreement=agreement(results),
              warm_s=warm, gflop=rank_gflop(ours))


def agreement(results: dict[str, list[np.ndarray]]) -> dict[str, dict[str, Any]]:
  """Each mode's rank scores (per batch [b, labels]) against 'once': equal predictions, the largest |difference|."""
  scores = {name: np.concatenate(r) for name, r in results.items()}
  return {
      name: {
          'same_predictions': int(np.sum(s.argmax(1) == scores['once'].argmax(1))), 'of': len(s),
          'max_abs_diff': float(np.max(np.abs(s - scores['once'])))
      } for name, s in scores.items() if name != 'once'
  }


def rank_gflop(ours: dict[str, modes_lib.Ours]) -> dict[str, float]:
  """Each jaxprompt mode's XLA GFLOP per rank-classification call, averaged over its compiled shapes."""
  return {
      name: float(np.mean([v for k, v in mode.flops.items() if k[0] == 'rank'])) / 1e9 for name, mode in ours.items()
  }


LABELS = {'once': 'ours, prompt once per batch', 'naive': 'ours, prompt in every row'}


def print_part(title: str, part: dict, unit: str) -> dict[str, dict[str, float]]:
  """Prints one table; returns per mode and clock its throughput and ratios."""
  total, units = part['total'], part['units']
  peft = [n for n in total if n.startswith('peft_')]
  print(f"\n== {title}\n   load average (1 min) before each round and at the end: "
        f"{', '.join(f'{x:.1f}' for x in part['load'])}; warm-up (compiles) {part['warm_s']:.0f} s")
  head = f"{'':34s} {'GFLOP/call':>10s} {'wall s':>7s} {'CPU s':>7s} {unit + '/s':>11s} {'x naive':>7s}"
  print(head + ''.join(f' {"x " + n:>10s}' for n in peft) + f" {'CPU: x naive':>12s}" +
        ''.join(f' {"x " + n:>10s}' for n in peft))
  out = {}
  for name, t in total.items():
    rate = {c: units / t[c] for c in ('wall', 'cpu')}
    ratio = {c: {b: total[b][c] / t[c] for b in ['naive'] + peft} for c in ('wall', 'cpu')}
    out[name] = dict(rate=rate, ratio=ratio)
    label = LABELS.get(name, f'PEFT, {name[5:-1]} torch thread(s)')
    gflop = part['gflop'].get(name)
    print(f"{label:34s} {'' if gflop is None else f'{gflop:10.1f}':>10s} {t['wall']:7.2f} {t['cpu']:7.2f} "
          f"{rate['wall']:11.1f} {ratio['wall']['naive']:7.2f}" + ''.join(f' {ratio["wall"][b]:10.2f}' for b in peft) +
          f" {ratio['cpu']['naive']:12.2f}" + ''.join(f' {ratio["cpu"][b]:10.2f}' for b in peft))
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='a tiny model and 2 batches of 4 (a smoke run)')
  parser.add_argument('--rounds', type=int, default=2, help='timed passes over the batches (best per batch)')
  parser.add_argument('--peft-threads', default='2,1', help='torch thread counts to time PEFT with')
  parser.add_argument('--no-peft', action='store_true', help='jaxprompt only')
  parser.add_argument('--parts', default='train,rank')
  args = parser.parse_args(argv)
  spec = modes_lib.QUICK if args.quick else modes_lib.Spec()
  threads = [int(t) for t in args.peft_threads.split(',') if t]
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as folder:
    ours, peft = modes_lib.build(spec, folder, peft=not args.no_peft)
  print(f'built in {time.perf_counter() - start:.0f} s: {spec} ({os.cpu_count()} CPUs)', flush=True)
  result: dict[str, Any] = {'spec': dataclasses.asdict(spec)}
  parts = args.parts.split(',')
  if 'train' in parts:
    part = train_part(spec, ours, peft, threads, args.rounds)
    losses = ', '.join(f'{k} {v:.6f}' for k, v in part['first_loss'].items())
    ratios = print_part(f'training, prompt tuning: {spec.train_batches} batches of {spec.batch}, prompt {spec.prompt}',
                        part, 'tok')
    print(f"   rows through the layers per example: {', '.join(f'{k} {v:.1f}' for k, v in part['rows'].items())}; "
          f"first-batch loss (must agree): {losses}")
    result['train'] = dict({k: v for k, v in part.items() if k != 'times'}, ratios=ratios,
                           samples={n: {c: t[c].tolist() for c in t} for n, t in part['times'].items()})
  if 'rank' in parts:
    part = rank_part(spec, ours, peft, threads, args.rounds)
    ratios = print_part(f'rank classification, 2 labels: {spec.rank_batches} batches of {spec.batch}', part, 'ex')
    for name, a in part['agreement'].items():
      print(f"   {name} vs once: predictions {a['same_predictions']}/{a['of']} equal, scores max |diff| "
            f"{a['max_abs_diff']:.2e}")
    result['rank'] = dict({k: v for k, v in part.items() if k != 'times'}, ratios=ratios,
                          samples={n: {c: t[c].tolist() for c in t} for n, t in part['times'].items()})
  print(f"targets: ours (once) >= {TARGETS['train']}x PEFT in training, >= {TARGETS['rank']}x in rank classification")
  print('JSON ' + json.dumps(result, sort_keys=True, default=float))
  return result


if __name__ == '__main__':
  main()
