"""Serving many prompts: a request stream of several tasks, mixed-task batches against one prompt at a time.

REQUESTS requests (512) of TASKS tasks (8) arrive in random task order and are served in arrival order in
batches of BATCH (32). Every task is a 2-label classification with its own trained prompt, answered by rank
classification (score both of the task's labels, pick the best): the same answers in every mode.

  mixed       one `PromptBank` over all tasks; each batch in one pass through `jaxprompt.eval.banks.rank_rows`,
              the code `jaxprompt infer --prompt NAME=FILE` serves with (`ModelFns.rank`: length buckets of 64,
              one jit compile per shape)
  split32     each batch split by task; each group run with its task's own one-prompt model (`ModelFns.rank`),
              padded to BATCH rows: a static-shape one-prompt server
  split_pow2  the same groups padded to the next power of two rows (one compile per size and length bucket)
  peft        Hugging Face PEFT 0.21: one `PeftModel` holding every task's PROMPT_TUNING adapter
              (`load_adapter`), each batch grouped by adapter (`set_adapter`), each group padded to its longest
              row and scored by one forward with `labels` per label (summed log-likelihood); torch threads =
              --torch-threads (the machine's cores)
  peft_1t     the same with 1 torch thread (on a shared 2-core VM, 2 threads were ~5x slower than 1)

One frozen model for all: a T5 1.1-shaped transformers `T5ForConditionalGeneration` with random weights
(untied head), saved as safetensors and read into jaxprompt by `jaxprompt/checkpoints/huggingface.py`; PEFT
runs on the same torch object. The prompts are random; PEFT's adapter folders are written here from
jaxprompt's prompts (PEFT keeps [2P, d] for SEQ_2_SEQ_LM and puts only the first P rows in front of the
encoder input, `PeftModelForSeq2SeqLM.forward`; the second half is written as zeros, so agreeing scores also
show which rows PEFT reads). The run checks that every mode gives the same predictions and scores.

A second bank ("varied") mixes prompt lengths (VARIED_PROMPTS) and one prefix-tuning task (K/V rows on every
attention kind) for jaxprompt's mixed and split_pow2 modes (split32 with --varied-split32); a mixed batch
carries the widest prompt on every row.

Every mode is warmed up first: each distinct compiled shape runs once (compiles counted and excluded), PEFT
runs each adapter once. Then the whole stream is timed with the modes interleaved batch by batch (every batch
served by each mode in turn, the order rotating), so that all modes meet the same load on a shared machine;
each mode's time is summed over the stream. Two clocks, as bench/real_lengths.py: wall, and the process's CPU
time of all threads. --reps rounds, best of. Run from the repository root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/serving.py            # t5_1_1_small widths, 4+4 layers: ~12 min
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/serving.py --quick    # a tiny model, 64 requests

It prints the tables, the agreement check and one line starting with `JSON `.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `bench` as a package

import jax
import numpy as np

from bench import lengths as lengths_lib
from bench.serving_modes import (
    BUCKETS,
    INPUTS,
    LABELS,
    LAYERS,
    PROMPT,
    QUICK,
    QUICK_CONFIG,
    TARGETS,
    VARIED_PREFIX,
    Call,
    CompileCounter,
    Mode,
    Stream,
    fns_for,
    hf_t5,
    make_prompts,
    make_stream,
    mixed_plan,
    peft_model,
    peft_plan,
    prompt_width,
    serve,
    split_plan,
    warm_up,
    write_adapter,
)
from jaxprompt.data.buckets import last_real_column
from jaxprompt.eval.evaluation import ModelFns
from jaxprompt.methods import prompt_bank
from jaxprompt.methods.base import Method
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.runtime import runtime as runtime_lib

REQUESTS, TASKS, BATCH = 512, 8, 32


# --------------------------------------------------------------------------------------------------------------
# Building everything.
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  stream: Stream
  modes: dict[str, Mode]  # uniform bank: mixed, split32, split_pow2 (+ peft)
  varied: dict[str, Mode]  # varied bank: mixed, split32, split_pow2 (empty if not built)
  info: dict[str, Any]


def jax_modes(rt: runtime_lib.Runtime, prompts: Mapping[str, tuple[Method, Any]], stream: Stream,
              shared: dict[Method, ModelFns], bank_fns: ModelFns | None = None) -> dict[str, Mode]:
  """mixed / split32 / split_pow2 over one set of task prompts. `shared` caches one server per method: tasks
  (and banks) with the same method share its compiled shapes, as one server process would."""
  bank, tree = prompt_bank.build_bank(prompts, rt.config)
  fns = bank_fns or fns_for(rt, bank, stream.tokens.shape[1])
  params = fns.rt.place_trainable(tree)
  servers = []
  for name in stream.names:
    method, trainable = prompts[name]
    if method not in shared:
      shared[method] = fns_for(rt, method, stream.tokens.shape[1])
    servers.append((shared[method], shared[method].rt.place_trainable(trainable), prompt_width(method)))
  width = prompt_width(bank)
  return {
      'mixed': Mode('mixed', LABELS['mixed'], functools.partial(mixed_plan, fns, params, stream, width)),
      'split32': Mode('split32', LABELS['split32'], functools.partial(split_plan, servers, stream, 'batch')),
      'split_pow2': Mode('split_pow2', LABELS['split_pow2'], functools.partial(split_plan, servers, stream, 'pow2'))
  }


def build(cfg: T5Config, stream: Stream, folder: str, *, peft: bool = True, varied: bool = True,
          varied_split32: bool = False, torch_threads: int | None = None, seed: int = 0) -> Setup:
  """The model (saved to `folder`, read back into jaxprompt), the prompts, and every mode over `stream`; the
  varied bank's split32 only if asked (it repeats the uniform bank's padding story at ~3 minutes)."""
  import torch  # pylint: disable=import-outside-toplevel
  threads = torch_threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  checkpoint = os.path.join(folder, 'model')
  base = hf_t5(cfg, checkpoint, seed)
  prompts = make_prompts(cfg, len(stream.names), seed)
  bank, _ = prompt_bank.build_bank(prompts, cfg)
  rt = runtime_lib.build_runtime(cfg, bank, checkpoint, {'inputs': stream.tokens.shape[1], 'targets': TARGETS})
  shared: dict[Method, ModelFns] = {}
  modes = jax_modes(rt, prompts, stream, shared, ModelFns(rt, length_buckets=BUCKETS))
  info: dict[str, Any] = {
      'params': int(sum(p.numel() for p in base.parameters())),
      'prompt_lengths': [prompt_width(m) for m, _ in prompts.values()]
  }
  if peft:
    folders = {
        name: write_adapter(os.path.join(folder, 'adapters', name), np.asarray(p['prompt']), cfg)
        for name, (_, p) in prompts.items()
    }
    model = peft_model(base, folders)
    lengths = [prompts[n][0].length for n in stream.names]
    modes['peft'] = Mode('peft', LABELS['peft'], functools.partial(peft_plan, model, cfg, stream, lengths, threads))
    if threads > 1:  # torch's per-op thread barriers stall when a co-tenant takes a core: shown beside
      modes['peft_1t'] = Mode('peft_1t', LABELS['peft_1t'], functools.partial(peft_plan, model, cfg, stream, lengths,
                                                                              1))
  other = {}
  if varied:
    varied_prompts = make_prompts(cfg, len(stream.names), seed, varied=True)
    other = {
        f'varied_{k}': dataclasses.replace(m, name=f'varied_{k}')
        for k, m in jax_modes(rt, varied_prompts, stream, shared).items()
        if k != 'split32' or varied_split32
    }
    info['varied'] = {n: (type(m).__name__, m.length) for n, (m, _) in varied_prompts.items()}
  return Setup(stream, modes, other, info)


# --------------------------------------------------------------------------------------------------------------
# Running and reporting.
# --------------------------------------------------------------------------------------------------------------
def agreement(results: Mapping[str, tuple[np.ndarray, np.ndarray]], reference: str) -> dict[str, dict]:
  """Each mode against `reference`: equal predictions and the largest |difference| of the chosen scores."""
  ref_best, ref_score = results[reference]
  out = {}
  for name, (best, score) in results.items():
    same = best == ref_best
    diff = np.abs(score - ref_score)[same]
    out[name] = {
        'same_predictions': int(same.sum()), 'requests': len(best),
        'max_abs_score_diff': float(np.max(diff, initial=0.0)),
        'max_rel_score_diff': float(np.max(diff / np.maximum(np.abs(ref_score[same]), 1.0), initial=0.0))
    }
  return out


def per_call(log: Sequence[tuple[int, int, float, float]], widths: int = BUCKETS) -> dict[int, dict[str, float]]:
  """Median (wall, CPU) seconds of one call by rows, over calls of inputs at most `widths` wide (one bucket):
  what a call costs as its rows grow."""
  out = {}
  for rows in sorted({r for r, w, _, _ in log if w <= widths}):
    picked = [(wall, cpu) for r, w, wall, cpu in log if r == rows and w <= widths]
    out[rows] = {
        'wall': float(np.median([x[0] for x in picked])), 'cpu': float(np.median([x[1] for x in picked])),
        'calls': len(picked)
    }
  return out


def summarise(modes: Mapping[str, Mode], plans: Mapping[str, list[Call]], times: Mapping[str, dict], n: int,
              warm: Mapping[str, tuple[int, float]]) -> dict[str, dict]:
  rows = {}
  for name in modes:
    calls = plans[name]
    wall, cpu = min(times[name]['wall']), min(times[name]['cpu'])
    rows[name] = {
        'calls': len(calls), 'rows': sum(c.rows for c in calls
                                        ), 'enc_positions_per_request': sum(c.positions for c in calls) / n,
        'gflop_per_request': sum(c.gflop for c in calls) / n, 'gflop_per_s': sum(c.gflop for c in calls) / wall,
        'shapes': warm[name][0], 'warm_s': warm[name][1], 'wall_s': wall, 'cpu_s': cpu, 'requests_per_s': n / wall,
        'requests_per_cpu_s': n / cpu
    }
  return rows


def print_table(title: str, rows: Mapping[str, dict], labels: Mapping[str, str], bases: Sequence[str]) -> None:
  """One line per mode; `x base` columns are its requests/s over that mode's (wall clock, then CPU clock)."""
  print(f'\n{title}')
  short = {b: b.replace('varied_', '') for b in bases}
  pad = max(len(labels[name]) for name in rows) + 1
  print(f'{"":{pad}s}{"calls":>6s}{"rows":>6s}{"enc pos/req":>12s}{"GFLOP/req":>10s}{"shapes":>7s}{"warm s":>8s}'
        f'{"wall s":>8s}{"CPU s":>8s}{"GFLOP/s":>8s}{"req/s":>8s}' + ''.join(f'{"x " + short[b]:>13s}' for b in bases) +
        '   CPU: ' + ' '.join(f'{"x " + short[b]:>12s}' for b in bases))
  for name, r in rows.items():
    print(f'{labels[name]:{pad}s}{r["calls"]:6d}{r["rows"]:6d}{r["enc_positions_per_request"]:12.1f}'
          f'{r["gflop_per_request"]:10.2f}{r["shapes"]:7d}{r["warm_s"]:8.1f}{r["wall_s"]:8.2f}{r["cpu_s"]:8.2f}'
          f'{r["gflop_per_s"]:8.1f}{r["requests_per_s"]:8.1f}' +
          ''.join(f'{r["requests_per_s"] / rows[b]["requests_per_s"]:13.2f}' for b in bases) + '        ' +
          ' '.join(f'{r["requests_per_cpu_s"] / rows[b]["requests_per_cpu_s"]:12.2f}' for b in bases))


def interleaved(modes: Mapping[str, Mode], stream: Stream,
                reps: int) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, list]]:
  """Times every mode over the whole stream, batch by batch: each batch is served by every mode in turn (the
  order rotating per batch and per round), so all modes meet the same moments of a shared machine's load.

  Returns ({mode: {'wall': [s per round], 'cpu': [...]}}, {mode: (best, score)}, {mode: per-call log}). A mode's
  seconds are its planning (grouping, padding) plus its calls, summed over the stream.
  """
  names, n, batches = list(modes), stream.size, len(stream.batches())
  times = {name: {'wall': [], 'cpu': []} for name in names}
  results = {name: (np.full(n, -1), np.full(n, np.nan)) for name in names}
  logs: dict[str, list] = {name: [] for name in names}
  for r in range(reps):
    spent = {name: [0.0, 0.0] for name in names}
    by_batch = {}
    for name in names:
      wall, cpu = time.perf_counter(), time.process_time()
      calls = modes[name].plan()
      spent[name][0] += time.perf_counter() - wall
      spent[name][1] += time.process_time() - cpu
      by_batch[name] = [[c for c in calls if c.requests[0] // stream.batch == b] for b in range(batches)]
      logs[name].clear()
    for b in range(batches):
      shift = (b + r) % len(names)
      for name in names[shift:] + names[:shift]:
        wall, cpu = time.perf_counter(), time.process_time()
        serve(by_batch[name][b], n, logs[name], out=results[name])
        spent[name][0] += time.perf_counter() - wall
        spent[name][1] += time.process_time() - cpu
      if b % 4 == 3:
        done = ', '.join(f'{k} {v[0]:.0f} s' for k, v in spent.items())
        print(f'  round {r + 1}, batch {b + 1}: {done}', flush=True)
    for name in names:
      times[name]['wall'].append(spent[name][0])
      times[name]['cpu'].append(spent[name][1])
  return times, results, logs


def run(setup: Setup, reps: int) -> dict[str, Any]:
  """Warms up every mode, times the whole stream per mode (`interleaved`), checks the answers agree."""
  counter = CompileCounter()
  modes = {**setup.modes, **setup.varied}
  n = setup.stream.size
  plans = {name: m.plan() for name, m in modes.items()}
  warm = {}
  for name, calls in plans.items():
    before = counter.count
    warm[name] = warm_up(calls)
    what = 'adapters' if name.startswith('peft') else 'shapes'
    print(f'  warm-up {name}: {warm[name][0]} {what}, {warm[name][1]:.1f} s, {counter.count - before} compiles',
          flush=True)
  before = counter.count
  load = os.getloadavg()
  times, results, logs = interleaved(modes, setup.stream, reps)
  out: dict[str, Any] = {
      'load_before': load, 'load_after': os.getloadavg(), 'compiles_while_timing': counter.count - before,
      'samples_s': times
  }
  out['rows'] = summarise(setup.modes, plans, times, n, warm)
  out['agree'] = agreement({k: results[k] for k in setup.modes}, 'mixed')
  if setup.varied:
    out['varied_rows'] = summarise(setup.varied, plans, times, n, warm)
    out['varied_agree'] = agreement({k: results[k] for k in setup.varied}, 'varied_mixed')
  out['per_call'] = {
      name: per_call(logs[name]) for name in ('mixed', 'split32', 'split_pow2', 'peft', 'peft_1t') if name in logs
  }
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='a tiny model and 64 requests (seconds; the test)')
  parser.add_argument('--model', default='t5_1_1_small', help='a jaxprompt config name (the model\'s widths)')
  parser.add_argument('--layers', type=int, default=LAYERS, help=f'encoder and decoder layers (default {LAYERS})')
  parser.add_argument('--requests', type=int, default=None, help=f'requests in the stream (default {REQUESTS})')
  parser.add_argument('--tasks', type=int, default=None, help=f'tasks, one prompt each (default {TASKS})')
  parser.add_argument('--batch', type=int, default=None, help=f'serving batch size (default {BATCH})')
  parser.add_argument('--reps', type=int, default=None, help='timed rounds, best of (default 1)')
  parser.add_argument('--no-peft', action='store_true')
  parser.add_argument('--no-varied', action='store_true', help='skip the mixed-lengths + prefix bank')
  parser.add_argument('--varied-split32', action='store_true', help='also time the varied bank\'s split32')
  parser.add_argument('--torch-threads', type=int, default=os.cpu_count(), help='default: the machine\'s cores')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  quick = QUICK if args.quick else {'requests': REQUESTS, 'tasks': TASKS, 'batch': BATCH, 'inputs': INPUTS, 'reps': 1}
  requests, tasks = args.requests or quick['requests'], args.tasks or quick['tasks']
  batch, reps = args.batch or quick['batch'], args.reps or quick['reps']
  cfg = QUICK_CONFIG if args.quick else get_config(args.model, num_encoder_layers=args.layers,
                                                   num_decoder_layers=args.layers)
  start = time.perf_counter()
  print(f'load average {os.getloadavg()}; {os.cpu_count()} cores; jax {jax.__version__}', flush=True)
  stream = make_stream(lengths_lib.calibrate(), requests, tasks, batch, quick['inputs'], args.seed)
  with tempfile.TemporaryDirectory(prefix='jp_serving_') as folder:
    setup = build(cfg, stream, folder, peft=not args.no_peft, varied=not args.no_varied,
                  varied_split32=args.varied_split32, torch_threads=args.torch_threads, seed=args.seed)
    import peft  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    lengths = lengths_lib.describe([last_real_column(r[None]) for r in stream.tokens])
    shape = 'QUICK_CONFIG' if args.quick else args.model + ' widths'
    print(
        f'model: {shape} (emb {cfg.emb_dim}, heads {cfg.num_heads}x{cfg.head_dim}, mlp {cfg.mlp_dim}, layers '
        f'{cfg.num_encoder_layers}+{cfg.num_decoder_layers}, vocab {cfg.vocab_size}; '
        f'{setup.info["params"] / 1e6:.1f} M params, float32); {requests} requests of {tasks} '
        f'tasks in batches of {batch}; input tokens mean {lengths["mean"]:.1f}, p90 {lengths["p90"]:.0f}, max '
        f'{lengths["max"]:.0f}; built in {time.perf_counter() - start:.0f} s', flush=True)
    out = run(setup, reps)
    out['varied_prompts'] = [v[1] for v in setup.info.get('varied', {}).values()][:-1]
  bases = [b for b in ('split32', 'split_pow2', 'peft', 'peft_1t') if b in out['rows']]
  print_table(
      f'== {tasks} prompt-tuning prompts of {PROMPT} rows; whole stream, interleaved by batch, best of '
      f'{reps} (wall and CPU s)', out['rows'], LABELS, bases)
  for name, a in out['agree'].items():
    if name != 'mixed':
      print(f'  {name} vs mixed: predictions {a["same_predictions"]}/{a["requests"]} equal, chosen scores max '
            f'|diff| {a["max_abs_score_diff"]:.2e} (relative {a["max_rel_score_diff"]:.1e})')
  if 'varied_rows' in out:
    labels = {f'varied_{k}': v for k, v in LABELS.items()}
    print_table(
        f'== varied bank: prompts {out["varied_prompts"]} rows + one {VARIED_PREFIX}-row prefix '
        f'(all attention kinds); mixed rows carry the widest prompt', out['varied_rows'], labels,
        [b for b in ('varied_split32', 'varied_split_pow2') if b in out['varied_rows']])
    for name, a in out['varied_agree'].items():
      if name != 'varied_mixed':
        print(f'  {name} vs varied_mixed: predictions {a["same_predictions"]}/{a["requests"]} equal, chosen '
              f'scores max |diff| {a["max_abs_score_diff"]:.2e}')
  print(f'\none call by rows (median over the timed calls with inputs of at most {BUCKETS} tokens; ms wall / CPU):')
  for mode, per in out['per_call'].items():
    print(f'  {mode:11s} ' + '  '.join(f'{r}: {t["wall"] * 1e3:.0f}/{t["cpu"] * 1e3:.0f}' for r, t in per.items()))
  print(f'\ncompiles while timing: {out["compiles_while_timing"]}; load average before timing '
        f'{tuple(round(x, 2) for x in out["load_before"])}, after {tuple(round(x, 2) for x in out["load_after"])}; '
        f'total {time.perf_counter() - start:.0f} s')
  out.update(
      args=vars(args), info=setup.info, jax=jax.__version__, torch=torch.__version__,
      transformers=transformers.__version__, peft=peft.__version__, cpus=os.cpu_count(), model={
          'emb_dim': cfg.emb_dim, 'num_heads': cfg.num_heads, 'head_dim': cfg.head_dim, 'mlp_dim': cfg.mlp_dim,
          'layers': [cfg.num_encoder_layers, cfg.num_decoder_layers], 'vocab_size': cfg.vocab_size
      }, input_lengths=lengths, total_s=time.perf_counter() - start)
  print('JSON ' + json.dumps(out, sort_keys=True, default=float))
  return out


if __name__ == '__main__':
  main()
