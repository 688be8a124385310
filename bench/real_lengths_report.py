"""The report of `bench/real_lengths.py`: per-variant summaries, the printed tables and the verdicts against the
issue's targets."""
from __future__ import annotations

from typing import Any

import numpy as np

from bench.length_batches import (
    INPUTS,
    LABELS,
    PACK_TARGETS,
    PROMPT,
    RANK_VARIANTS,
    TARGETS,
    TARGETS_TO_MEET,
    TRAIN_VARIANTS,
    examples_in,
)


def density(batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Non-padding encoder positions / row positions (prompt slots count as non-padding), examples per row."""
  tokens = np.concatenate([b['encoder_input_tokens'] for b in batches])
  return {
      'density': float(np.mean(tokens != 0)),
      'examples_per_row': sum(examples_in(b) for b in batches) / tokens.shape[0], 'width': float(tokens.shape[1])
  }


def summarise(candidates: dict[str, Any], times: dict[str, dict]) -> dict[str, dict]:
  rows = {}
  for name, c in candidates.items():
    row = {
        'steps': c.steps, 'examples': c.examples, 'useful_tokens': c.useful, 'gflop': c.gflops, 'useful_inputs':
            c.useful_inputs, 'enc_useful_fraction': c.useful_inputs / c.enc_positions, 'enc_positions': c.enc_positions,
        'dec_positions': c.dec_positions, 'shapes': c.shapes, 'compile_s': c.compile_s, **c.extra
    }
    for clock in ('wall', 'cpu'):
      best = min(times[name][clock]) * c.scale
      row[f'{clock}_s'] = best
      row[f'{clock}_median_s'] = float(np.median(times[name][clock])) * c.scale
      row[f'{clock}_tokens_per_s'] = c.useful / best
      row[f'{clock}_examples_per_s'] = c.examples / best
      row[f'{clock}_gflops'] = c.gflops / best
    best = int(np.argmin(times[name]['wall']))
    user, system, faults = c.usage[best]
    row.update(sys_share=system / max(user + system, 1e-9), page_faults=faults * c.scale)
    rows[name] = row
  for clock in ('wall', 'cpu'):
    key = f'{clock}_tokens_per_s'
    for ref, against in (('fixed512', 'x_fixed'), ('peft', 'x_peft')):
      if ref in rows:
        for name, row in rows.items():
          if not name.startswith('rank_'):
            row[f'{clock}_{against}'] = row[key] / rows[ref][key]
    if 'rank_peft' in rows:
      for name, row in rows.items():
        if name.startswith('rank_'):
          row[f'{clock}_x_peft'] = row[f'{clock}_examples_per_s'] / rows['rank_peft'][f'{clock}_examples_per_s']
  return rows


# --------------------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------------------
def mark(value: float, target: float) -> str:
  return f'{value:.2f}x (target >= {target}x) ' + ('met' if value >= target else 'MISSED')


def print_dataset(name: str, info: dict[str, Any]) -> None:
  rows, tl, rl = info['rows'], info['train_lengths'], info['rank_lengths']
  print(f"\n== {name}: training on {info['train_shape']} lengths (tokens incl. prefix + EOS: mean {tl['mean']:.1f}, "
        f"p50 {tl['p50']:.0f}, p90 {tl['p90']:.0f}, max {tl['max']:.0f}); rank classification on "
        f"{info['rank_shape']} (mean {rl['mean']:.1f}, max {rl['max']:.0f}). Wall clock, best of "
        f"{len(next(iter(info['samples_s'].values()))['wall'])}; (cpu) = the x PEFT ratio on process CPU time; "
        f"sys = share of the CPU time spent in the kernel (page faults)")
  print(f"{'training':42s} {'steps':>5s} {'ex':>4s} {'shapes':>6s} {'comp s':>6s} {'enc pos/ex':>10s} "
        f"{'useful enc':>10s} {'GFLOP/ktok':>10s} {'pass s':>7s} {'tok/s':>6s} {'GFLOP/s':>7s} {'sys':>4s} "
        f"{'x fixed':>7s} {'x PEFT':>6s} {'(cpu)':>5s}")
  for v in TRAIN_VARIANTS:
    if v not in rows:
      continue
    r = rows[v]
    print(f"{LABELS[v]:42s} {r['steps']:5d} {r['examples']:4d} {r['shapes']:6d} {r['compile_s']:6.0f} "
          f"{r['enc_positions'] / r['examples']:10.1f} {r['enc_useful_fraction']:10.1%} "
          f"{r['gflop'] / r['useful_tokens'] * 1e3:10.1f} {r['wall_s']:7.2f} {r['wall_tokens_per_s']:6.0f} "
          f"{r['wall_gflops']:7.1f} {r['sys_share']:4.0%} {r.get('wall_x_fixed', float('nan')):7.2f} "
          f"{r.get('wall_x_peft', float('nan')):6.2f} {r.get('cpu_x_peft', float('nan')):5.2f}")
  if 'fixed512' not in rows:
    f = info['fixed512_analytic']
    print(f"{LABELS['fixed512'] + ' (FLOPs only)':42s} {'':5s} {'':4s} {'':6s} {'':6s} "
          f"{INPUTS + PROMPT:10.1f} {f['useful_inputs'] / f['enc_positions']:10.1%} "
          f"{f['gflop'] / f['useful_tokens'] * 1e3:10.1f}   (not timed)")
  if 'packed64' in rows:
    p = rows['packed64']
    print(f"  packing: {p['density']:.1%} of the {p['width']:.0f} row positions hold a token or prompt slot "
          f"({p['trimmed_density']:.1%} after the buckets), {p['examples_per_row']:.2f} examples/row "
          f"(targets {PACK_TARGETS}); with targets {TARGETS}: {p['targets8']['density']:.1%}, "
          f"{p['targets8']['examples_per_row']:.2f} examples/row")
  if 'peft' in rows:
    print(f"  PEFT batch widths (longest row): {rows['peft'].get('widths')}")
  rank = [v for v in RANK_VARIANTS if v in rows]
  if rank:
    print(f"{'rank classification (2 labels)':42s} {'batches':>7s} {'shapes':>6s} {'comp s':>6s} "
          f"{'GFLOP/ex':>8s} {'pass s':>7s} {'ex/s':>7s} {'GFLOP/s':>7s} {'sys':>4s} {'x PEFT':>6s} {'(cpu)':>5s}")
    for v in rank:
      r = rows[v]
      print(f"{LABELS[v]:42s} {r['steps']:7d} {r['shapes']:6d} {r['compile_s']:6.0f} "
            f"{r['gflop'] / r['examples']:8.2f} {r['wall_s']:7.2f} {r['wall_examples_per_s']:7.1f} "
            f"{r['wall_gflops']:7.1f} {r['sys_share']:4.0%} {r.get('wall_x_peft', float('nan')):6.2f} "
            f"{r.get('cpu_x_peft', float('nan')):5.2f}")


def verdicts(results: dict[str, dict]) -> dict[str, Any]:
  """The issue's targets against the best of our bucketed / packed variants."""
  out = {}
  ours = ('buckets64', 'buckets16', 'packed64')

  def best(rows, key):
    have = [(rows[v][key], v) for v in ours if v in rows and key in rows[v]]
    return max(have) if have else None

  if 'sst2' in results:
    rows = results['sst2']['rows']
    if (b := best(rows, 'wall_x_fixed')):
      out['sst2_vs_fixed'] = {'value': b[0], 'variant': b[1], 'target': TARGETS_TO_MEET['sst2_vs_fixed']}
    if (b := best(rows, 'wall_x_peft')):
      out['sst2_vs_peft'] = {'value': b[0], 'variant': b[1], 'target': TARGETS_TO_MEET['sst2_vs_peft']}
  if 'boolq' in results and (b := best(results['boolq']['rows'], 'wall_x_peft')):
    out['boolq_vs_peft'] = {'value': b[0], 'variant': b[1], 'target': TARGETS_TO_MEET['boolq_vs_peft']}
  for name, info in results.items():
    rows = info['rows']
    if 'rank_buckets64' in rows and 'wall_x_peft' in rows['rank_buckets64']:
      out[f'{name}_rank_vs_peft'] = {
          'value': rows['rank_buckets64']['wall_x_peft'], 'variant': 'rank_buckets64',
          'target': TARGETS_TO_MEET['rank_vs_peft']
      }
  for v in out.values():
    v['met'] = v['value'] >= v['target']
  return out
