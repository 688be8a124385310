"""Prompt-tuning speed on realistic input lengths: no compute on padding (issue 15), side by side in one process.

T5 1.1 small-sized (`get_config('t5_1_1_small')`), random weights, float32, a 100-token prompt, 32 examples (or
32 packed rows) per step, this CPU. Examples are random token ids with SST-2- and BoolQ-shaped lengths
(`bench/lengths.py` says where the statistics come from). On the same examples it times:

  fixed512         every batch padded to inputs 512 (+ the prompt the model inserts) and targets 8: the
                   google-research/prompt-tuning setup (TASK_FEATURE_LENGTHS {'inputs': 512, 'targets': 8})
  buckets64/16     the same batches cut by `jaxprompt.data.buckets.LengthBuckets` (step 64, the default; 16)
  packed           seqio packing with a copy of the prompt in front of every example
                   (`pipeline.convert_features(pack=True, prompt_slots=100)`), then cut by the buckets
  peft             Hugging Face PEFT `PromptTuningConfig(SEQ_2_SEQ_LM, 100 virtual tokens)` over
                   `T5ForConditionalGeneration`, batches padded to their longest row by `DataCollatorForSeq2Seq`
and rank classification (2 labels): `BaseModel.rank_classify` (encoder once per example) against PEFT scoring
each label with a full forward. Useful tokens are the non-padding input and target tokens of the examples a
step processes (prompt positions excluded). Run from the repository root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/real_lengths.py            # default: 35 min under load here
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/real_lengths.py --quick    # 1 round, 1 batch: ~10 min

It prints a table per dataset shape (ratios measured in one process, round-robin, best of N rounds, compile
excluded) and one line starting with `JSON `.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `bench` as a package

import jax
import numpy as np

from bench import lengths as lengths_lib
from bench import prompt_step
from bench.length_batches import (
    BATCH,
    BATCHES,
    DATASETS,
    DEFAULT_VARIANTS,
    INPUTS,
    PACK_TARGETS,
    PROMPT,
    RANK_BATCHES,
    RANK_VARIANTS,
    TARGETS,
    TRAIN_VARIANTS,
    buckets_module,
    collate,
    encoder_width,
    examples_in,
    forward_parts,
    hf_padder,
    packed_batches,
    peft_features,
    shape_key,
    train_flops,
    unpacked_batches,
    useful_tokens,
)
from bench.real_lengths_report import density, mark, print_dataset, summarise, verdicts
from jaxprompt.data import pipeline
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.base import BaseModel
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim
from jaxprompt.runtime import step as step_lib
from jaxprompt.runtime.state import init_train_state


# --------------------------------------------------------------------------------------------------------------
# Candidates: a callable that runs one pass (all of a variant's batches) and what the pass holds.
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Candidate:
  name: str
  run: Callable[[], Any]  # one call, timed
  scale: float  # pass time = call time * scale (fixed512 times `fixed_steps` of its identical steps)
  steps: int  # steps (batches) in one pass
  examples: int  # examples in one pass
  useful: int  # useful tokens in one pass
  useful_inputs: int  # ... of which input tokens
  gflops: float  # model GFLOP of one pass
  enc_positions: int  # encoder positions computed in one pass (prompt included)
  dec_positions: int
  shapes: int = 0  # distinct compiled shapes
  compile_s: float = 0.0
  warm: Callable[[], Any] | None = None  # an untimed first step before the rounds (None: none)
  extra: dict = dataclasses.field(default_factory=dict)
  usage: list = dataclasses.field(default_factory=list)  # per timed call: (user s, sys s, minor page faults)

  def timed(self) -> Callable[[], Any]:
    """`run`, recording the process's user / system CPU seconds and page faults of each call."""

    def call():
      before = resource.getrusage(resource.RUSAGE_SELF)
      out = self.run()
      after = resource.getrusage(resource.RUSAGE_SELF)
      self.usage.append(
          (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt))
      return out

    return call


class Compiler:
  """Compiles a jitted function once per argument shape (timed), shared by every variant that meets the shape."""

  def __init__(self, fn: Callable):
    self.fn, self.cache, self.seconds, self.xla_flops = jax.jit(fn), {}, {}, {}

  def __call__(self, key: tuple, *args):
    if key not in self.cache:
      start = time.perf_counter()
      self.cache[key] = self.fn.lower(*args).compile()
      self.seconds[key] = time.perf_counter() - start
      self.xla_flops[key] = prompt_step.xla_flops(self.cache[key])  # XLA's own count, a cross-check
    return self.cache[key]


def ours_train_candidate(name: str, batches: list[dict[str, np.ndarray]], compiler: Compiler, holder: dict,
                         frozen: dict, cfg: T5Config, passes_over: int | None = None) -> Candidate:
  """A pass of our train step over `batches` (compiling each new shape first, outside the timing)."""
  device = [{k: jax.device_put(v) for k, v in b.items()} for b in batches]
  compiled = [compiler(shape_key(b), holder['state'], frozen, d) for b, d in zip(batches, device)]
  timed = list(zip(compiled, device))[:passes_over] if passes_over else list(zip(compiled, device))

  def run(steps=timed):
    state = holder['state']
    for fn, batch in steps:
      state, metrics = fn(state, frozen, batch)
    holder['state'] = jax.block_until_ready(state)
    return metrics

  keys = {shape_key(b) for b in batches}
  enc = sum(BATCH * encoder_width(b) for b in batches)
  dec = sum(BATCH * b['decoder_target_tokens'].shape[1] for b in batches)
  flops = sum(train_flops(cfg, BATCH, encoder_width(b), b['decoder_target_tokens'].shape[1]) for b in batches)
  counts = [useful_tokens(b) for b in batches]
  xla = sum(compiler.xla_flops[shape_key(b)] for b in batches) / 1e9
  return Candidate(name, run,
                   len(batches) / len(timed), len(batches), sum(examples_in(b) for b in batches),
                   sum(i + t for i, t in counts), sum(i for i, _ in counts), flops / 1e9, enc, dec, len(keys),
                   sum(compiler.seconds[k] for k in keys), warm=functools.partial(run, timed[:1]),
                   extra={'xla_gflop': xla})


def peft_train_candidate(model, opt, collator, examples, cfg: T5Config) -> Candidate:
  batches = collate(collator, examples)

  def run(steps=batches):
    for batch in steps:
      loss = model(**batch).loss
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  useful_inputs = sum(int((b['attention_mask'] > 0).sum()) for b in batches)
  useful = useful_inputs + sum(int((b['labels'] >= 0).sum()) for b in batches)
  enc = sum(BATCH * (b['input_ids'].shape[1] + PROMPT) for b in batches)
  dec = sum(BATCH * b['labels'].shape[1] for b in batches)
  flops = sum(train_flops(cfg, BATCH, b['input_ids'].shape[1] + PROMPT, b['labels'].shape[1]) for b in batches)
  return Candidate('peft', run, 1.0, len(batches), BATCH * len(batches), useful, useful_inputs, flops / 1e9, enc, dec,
                   warm=functools.partial(run, batches[:1]),
                   extra={'widths': sorted({int(b['input_ids'].shape[1]) for b in batches})})


def rank_candidates(model: BaseModel, frozen: dict, prompt: dict, examples, label_ids, buckets, cfg: T5Config, peft,
                    collator, variants: list[str], fixed_steps: int) -> dict[str, Candidate]:
  """Scoring every example against each label: ours (encoder once, bucketed or fixed 512) and PEFT."""
  import torch  # pylint: disable=import-outside-toplevel
  lt = max(len(x) for x in label_ids)
  candidates = np.zeros((len(label_ids), lt), np.int32)
  for i, ids in enumerate(label_ids):
    candidates[i, :len(ids)] = ids
  c = len(label_ids)
  rows = [examples[i:i + BATCH] for i in range(0, len(examples) - BATCH + 1, BATCH)]
  padded = [pipeline.to_features([e['inputs'] for e in r], None, {'inputs': INPUTS, 'targets': TARGETS}) for r in rows]
  useful = sum(int(np.count_nonzero(p['encoder_input_tokens'])) for p in padded)
  out = {}
  compiler = Compiler(model.rank_classify)
  for name, spec in (('rank_buckets64', 64), ('rank_fixed512', None)):
    if name not in variants:
      continue
    cut = buckets.LengthBuckets.from_spec(spec)
    enc = [cut.trim({'encoder_input_tokens': p['encoder_input_tokens']})['encoder_input_tokens'] for p in padded]
    cand = jax.device_put(candidates)
    inputs = [{'encoder_input_tokens': jax.device_put(e)} for e in enc]
    calls = [(compiler(('rank', e.shape), frozen, prompt, x, cand), x) for e, x in zip(enc, inputs)]
    timed = calls[:fixed_steps] if spec is None else calls  # fixed 512: every batch is the same work

    def run(calls=timed, cand=cand):
      return jax.block_until_ready([fn(frozen, prompt, e, cand) for fn, e in calls])

    keys = {('rank', e.shape) for e in enc}
    flops = 0.0
    for e in enc:
      parts = forward_parts(cfg, BATCH, e.shape[1] + PROMPT, BATCH * c, lt)
      flops += sum(parts.values())
    out[name] = Candidate(name, run,
                          len(calls) / len(timed), len(enc), BATCH * len(enc), useful, useful, flops / 1e9,
                          sum(BATCH * (e.shape[1] + PROMPT) for e in enc), sum(BATCH * c * lt for _ in enc), len(keys),
                          sum(compiler.seconds[k] for k in keys),
                          warm=None if spec is None else functools.partial(run, calls[:1]),
                          extra={'xla_gflop': sum(compiler.xla_flops[('rank', e.shape)] for e in enc) / 1e9})
  if 'rank_peft' in variants:
    batches = [dict(collator(peft_features(r, labels=False))) for r in rows]
    label_tensors = [torch.tensor(ids, dtype=torch.long) for ids in label_ids]

    def run_peft(steps=batches):
      scores = []
      with torch.no_grad():
        for b in steps:
          per_label = []
          for ids in label_tensors:
            labels = ids.repeat(b['input_ids'].shape[0], 1)
            logits = peft(input_ids=b['input_ids'], attention_mask=b['attention_mask'], labels=labels).logits
            logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
            per_label.append(logp.sum(-1))
          scores.append(torch.stack(per_label, -1))
      return scores

    flops = 0.0
    for b in batches:
      width = b['input_ids'].shape[1] + PROMPT
      for ids in label_ids:
        flops += sum(forward_parts(cfg, BATCH, width, BATCH, len(ids)).values())
    enc = sum(c * BATCH * (b['input_ids'].shape[1] + PROMPT) for b in batches)
    dec = sum(BATCH * len(ids) for ids in label_ids) * len(batches)
    out['rank_peft'] = Candidate('rank_peft', run_peft, 1.0, len(batches), BATCH * len(batches), useful, useful,
                                 flops / 1e9, enc, dec, warm=functools.partial(run_peft, batches[:1]))
  return out


# --------------------------------------------------------------------------------------------------------------
# One dataset shape.
# --------------------------------------------------------------------------------------------------------------
def bench_dataset(name: str, args, cfg: T5Config, cal, model: BaseModel, frozen: dict, prompt: dict, peft_parts,
                  collator) -> dict[str, Any]:
  train_shape, rank_shape = (lengths_lib.SHAPES[s] for s in DATASETS[name])
  seed = args.seed + (0 if name == 'sst2' else 1000)
  examples = lengths_lib.synthesize(train_shape, args.batches[name] * BATCH, seed, cal, INPUTS)
  rank_examples = lengths_lib.synthesize(rank_shape, args.rank_batches[name] * BATCH, seed + 1, cal, INPUTS)
  variants = list(args.variants)
  if name not in args.fixed_on:
    variants = [v for v in variants if v not in ('fixed512', 'rank_fixed512')]
  info: dict[str, Any] = {
      'train_lengths': lengths_lib.describe([len(e['inputs']) for e in examples]),
      'rank_lengths': lengths_lib.describe([len(e['inputs']) for e in rank_examples]), 'train_shape': train_shape.name,
      'rank_shape': rank_shape.name
  }
  candidates: dict[str, Candidate] = {}
  start = time.perf_counter()
  fixed = unpacked_batches(examples)
  counts = [useful_tokens(b) for b in fixed]
  info['fixed512_analytic'] = {  # FLOPs of the padded batches, whether or not they are timed
      'gflop': sum(train_flops(cfg, BATCH, INPUTS + PROMPT, TARGETS) for _ in fixed) / 1e9,
      'useful_tokens': sum(i + t for i, t in counts), 'useful_inputs': sum(i for i, _ in counts),
      'enc_positions': len(fixed) * BATCH * (INPUTS + PROMPT)
  }
  if any(v in variants for v in ('fixed512', 'buckets64', 'buckets16', 'packed64')):
    buckets = buckets_module()
    optimizer = optim.make_optimizer()
    holder = {'state': init_train_state(prompt, optimizer.tx, jax.random.PRNGKey(1))}
    compiler = Compiler(functools.partial(step_lib.train_step, model, optimizer))
    for v, spec in (('fixed512', None), ('buckets64', 64), ('buckets16', 16)):
      if v in variants:
        cut = buckets.LengthBuckets.from_spec(spec)
        batches = [cut.trim(b) for b in fixed]
        candidates[v] = ours_train_candidate(v, batches, compiler, holder, frozen, cfg,
                                             args.fixed_steps if v == 'fixed512' else None)
        print(f'  {name} {v}: {candidates[v].shapes} shapes, compiled in {candidates[v].compile_s:.0f} s', flush=True)
    if 'fixed512' in candidates:
      candidates['fixed512'].warm = None  # one shape, one long step: its first run is no slower
    if 'packed64' in variants:
      cut = buckets.LengthBuckets.from_spec({'inputs': 64, 'targets': 8})
      packed = packed_batches(examples, PACK_TARGETS, len(examples))
      batches = [cut.trim(b) for b in packed]
      candidates['packed64'] = c = ours_train_candidate('packed64', batches, compiler, holder, frozen, cfg)
      c.warm = None
      c.extra.update(density(packed), trimmed_density=density(batches)['density'],
                     targets8=density(packed_batches(examples, TARGETS, min(len(examples), 8 * BATCH))))
      print(
          f'  {name} packed64: {c.shapes} shapes, compiled in {c.compile_s:.0f} s; {c.extra["density"]:.1%} '
          f'dense, {c.extra["examples_per_row"]:.2f} examples/row', flush=True)
  if 'peft' in variants:
    peft, opt = peft_parts
    candidates['peft'] = peft_train_candidate(peft, opt, collator, examples, cfg)
  rank_variants = [v for v in variants if v.startswith('rank_')]
  if rank_variants:
    candidates.update(
        rank_candidates(model, frozen, prompt, rank_examples, cal.label_ids[rank_shape.name], buckets_module(), cfg,
                        peft_parts[0], collator, rank_variants, args.fixed_steps))
  info['setup_s'] = time.perf_counter() - start
  for c in candidates.values():
    if c.steps == 0:
      raise SystemExit(f'{name} {c.name}: no full batch of {BATCH}; raise --batches / --rank-batches')
  for c in candidates.values():  # an untimed first step (after compiling), torch's always
    if c.warm is not None and (not args.quick or c.name.endswith('peft')):
      c.warm()
  print(
      f'{name}: built and warmed up in {time.perf_counter() - start:.0f} s; timing {args.reps} rounds of '
      f'{len(candidates)} candidates', flush=True)
  times = prompt_step.race({k: (c.timed(), 1) for k, c in candidates.items()}, args.reps, warmup=0)
  info['samples_s'] = times
  info['rows'] = summarise(candidates, times)
  return info


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='1 train batch, 1 rank batch, 1 round, no warm-up step for the AOT-compiled JAX steps')
  parser.add_argument('--batches', type=int, default=None,
                      help='unpacked train steps per pass (default: SST-2 4, BoolQ 2; --quick 1)')
  parser.add_argument('--rank-batches', type=int, default=None,
                      help='rank-classification batches per pass (default: SST-2 4, BoolQ 2; --quick 1)')
  parser.add_argument('--reps', type=int, default=None, help='timed rounds (default 2, --quick 1)')
  parser.add_argument(
      '--fixed-on', default='sst2',
      help='datasets on which fixed512 (and rank_fixed512) are timed; elsewhere only their FLOPs '
      'are counted (a 32 x 612 train step takes over a minute here)')
  parser.add_argument(
      '--fixed-steps', type=int, default=1,
      help='fixed512 steps timed per pass (all its steps have one shape and the same work; the pass '
      'time is scaled to --batches)')
  parser.add_argument('--datasets', default='sst2,boolq', help='comma list of: ' + ', '.join(DATASETS))
  parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                      help='comma list of: ' + ', '.join(TRAIN_VARIANTS + RANK_VARIANTS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--torch-threads', type=int, default=2)
  args = parser.parse_args(argv)
  args.batches = {d: args.batches or n[args.quick] for d, n in BATCHES.items()}
  args.rank_batches = {d: args.rank_batches or n[args.quick] for d, n in RANK_BATCHES.items()}
  args.reps = args.reps or (1 if args.quick else 2)
  args.variants = [v for v in args.variants.split(',') if v]
  args.fixed_on = [d for d in args.fixed_on.split(',') if d]
  datasets = [d for d in args.datasets.split(',') if d]
  for v in args.variants:
    if v not in TRAIN_VARIANTS + RANK_VARIANTS:
      parser.error(f'unknown variant {v!r}')
  for d in datasets:
    if d not in DATASETS:
      parser.error(f'unknown dataset {d!r}')

  cfg = get_config('t5_1_1_small')
  cal = lengths_lib.calibrate()
  print(
      f'T5 pieces per word (shipped vocabulary, bench/lengths.py CALIBRATION): {cal.factors}; format tokens: '
      f'{cal.prefix_tokens}; label ids: {cal.label_ids}', flush=True)
  model = build_model(cfg, PromptTuning(length=PROMPT, embed_dim=cfg.emb_dim))
  frozen = jax.jit(model.init_params)(jax.random.PRNGKey(0))
  prompt = model.method.init(jax.random.PRNGKey(1), frozen)
  peft_parts, collator, info = (None, None), None, {}
  if 'peft' in args.variants or 'rank_peft' in args.variants:
    from transformers import DataCollatorForSeq2Seq  # pylint: disable=import-outside-toplevel
    peft, opt, info = prompt_step.peft_model(cfg, PROMPT, args.torch_threads)
    peft_parts = (peft, opt)
    collator = DataCollatorForSeq2Seq(hf_padder(), model=None, label_pad_token_id=-100, padding='longest',
                                      return_tensors='pt')
  results = {}
  for name in datasets:
    results[name] = bench_dataset(name, args, cfg, cal, model, frozen, prompt, peft_parts, collator)
    print_dataset(name, results[name])
  verdict = verdicts(results)
  print('\ntargets (wall clock, best of our bucketed / packed variants):')
  for key, v in verdict.items():
    print(f"  {key}: {mark(v['value'], v['target'])} [{v['variant']}]")
  out = {
      'results': results, 'verdicts': verdict, 'calibration': dataclasses.asdict(cal),
      'args': {k: v for k, v in vars(args).items()}, 'jax': jax.__version__, 'cpus': os.cpu_count(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), **info
  }
  print('JSON ' + json.dumps(out, sort_keys=True, default=float))
  return out


if __name__ == '__main__':
  main()
