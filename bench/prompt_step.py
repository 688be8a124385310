"""Prompt-tuning step benchmark on a T5 1.1 small-sized model (random weights, float32, this CPU).

Measures, side by side in one process (round-robin, best of N after warm-up, compile excluded):
  P1  train step time / forward time (ours; also a full fine-tuning step for comparison)
  P2  model FLOPs per second of the train step / this machine's float32 matmul peak (a big jitted jnp.dot)
  P3  training tokens/s, ours vs Hugging Face PEFT `PromptTuningConfig` (transformers + torch, CPU)
  P4  bytes of gradient + optimizer state, ours vs full-gradient-then-mask
and prints a table plus one JSON line. Run from the repo root:

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/prompt_step.py --reps 8    # or --quick; --help for options

FLOPs are counted analytically per matmul (see `matmul_flops`) and cross-checked with XLA's cost analysis.
Model variants: the token lookup pinned to one-hot or gather (`T5Config.one_hot_embedding`), Eigen dots.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import hf_twins
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.base import BaseModel
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim
from jaxprompt.runtime import step as step_lib
from jaxprompt.runtime.state import init_train_state


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int = 8
  inputs: int = 256
  targets: int = 16
  prompt: int = 100

  @property
  def tokens(self) -> int:
    """Training tokens per step (input + target positions, prompt excluded), the same for PEFT and us."""
    return self.batch * (self.inputs + self.targets)


# --------------------------------------------------------------------------------------------------------------
# FLOP counting (matmuls only; elementwise work is ignored, as in the usual MFU definition).
# --------------------------------------------------------------------------------------------------------------
def _mm(m: int, k: int, n: int) -> int:
  return 2 * m * k * n


def matmul_flops(cfg: T5Config, s: Shape) -> dict[str, int]:
  """Analytic matmul FLOPs of one step. Keys:

  forward          every matmul of the forward pass except the one-hot embedding / relpos lookups (a gather
                   does those with no FLOPs);
  onehot_forward   the one-hot lookups t5x-style `Embed(one_hot=True)` really executes: [b*l, vocab] x
                   [vocab, embed] for encoder and decoder tokens, plus the relpos-bias one-hots;
  prompt_backward  what must be computed to get d loss / d prompt: for x @ W with a frozen W only dx (1x the
                   forward), for activation x activation products (attention scores, weighted sums) both
                   operands' gradients (2x) wherever they depend on the prompt. Nothing that does not depend on
                   the prompt is differentiated: decoder layer 0's self-attention and cross-attention query
                   projection (inputs are frozen decoder embeddings), its cross-attention score gradient only
                   w.r.t. the keys; the lookups never. Encoder layer 0's q/k/v input gradients are needed only
                   at the prompt rows;
  full_backward    full fine-tuning: dx + dW for every weight matmul (2x), 2x the attention products, dW of the
                   one-hot lookups (1x).
  """
  b, le, lt = s.batch, s.inputs + s.prompt, s.targets
  te, td = b * le, b * lt
  e, inner, f, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  h, hd, na = cfg.num_heads, cfg.head_dim, len(cfg.mlp_activations)
  fwd = pbwd = fbwd = 0

  def add(flops: int, prompt_mult: float, full_mult: float = 2.0):
    nonlocal fwd, pbwd, fbwd
    fwd += flops
    pbwd += int(prompt_mult * flops)
    fbwd += int(full_mult * flops)

  for layer in range(cfg.num_encoder_layers):
    add(3 * _mm(te, e, inner), (s.prompt / le) if layer == 0 else 1.0)  # q, k, v (dx only at prompt rows)
    add(_mm(te, inner, e), 1.0)  # out
    add(2 * _mm(b * h * le, hd, le), 2.0)  # q.k and weights.v
    add(na * _mm(te, e, f) + _mm(te, f, e), 1.0)  # wi_*, wo
  for layer in range(cfg.num_decoder_layers):
    first = layer == 0
    add(4 * _mm(td, e, inner), 0.0 if first else 1.0)  # self-attention q, k, v, out
    add(2 * _mm(b * h * lt, hd, lt), 0.0 if first else 2.0)
    add(_mm(td, e, inner), 0.0 if first else 1.0)  # cross-attention query
    add(_mm(td, inner, e), 1.0)  # cross-attention out
    add(2 * _mm(te, e, inner), 1.0)  # cross-attention keys / values over the encoder output
    add(_mm(b * h * lt, hd, le), 1.0 if first else 2.0)  # q.k (layer 0: dK only)
    add(_mm(b * h * lt, le, hd), 2.0)  # weights.v
    add(na * _mm(td, e, f) + _mm(td, f, e), 1.0)
  add(_mm(td, e, v), 1.0)  # logits
  onehot = _mm(b * s.inputs, v, e) + _mm(td, v, e)
  relpos = _mm(h, cfg.relpos_num_buckets, le * le) + _mm(h, cfg.relpos_num_buckets, lt * lt)
  return {
      'forward': fwd, 'onehot_forward': onehot + relpos, 'prompt_backward': pbwd,
      'full_backward': fbwd + onehot + relpos
  }


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


# --------------------------------------------------------------------------------------------------------------
# Our model and its variants.
# --------------------------------------------------------------------------------------------------------------
def make_model(cfg: T5Config, s: Shape, gather: bool = False) -> BaseModel:
  """The shipped model with the lookup pinned: one-hot matmul (t5x's, the TPU default) or gather (the
  default off TPU, `T5Config.one_hot_embedding=None`). Same parameters and outputs either way."""
  return build_model(cfg.replace(one_hot_embedding=not gather), PromptTuning(s.prompt, cfg.emb_dim))


def make_batch(cfg: T5Config, s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
  """Full-length random examples (EOS-terminated), seqio EncDecFeatureConverter layout."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, cfg.vocab_size, (s.batch, s.inputs), dtype=np.int32)
  enc[:, -1] = 1
  targets = rng.integers(2, cfg.vocab_size, (s.batch, s.targets), dtype=np.int32)
  targets[:, -1] = 1
  dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  return {
      'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in, 'decoder_target_tokens': targets,
      'decoder_loss_weights': np.ones_like(targets, np.float32)
  }


def init_params(model: BaseModel, s: Shape) -> tuple[dict, dict]:
  """Random (frozen, prompt) trees."""
  del s
  frozen = jax.jit(model.init_params)(jax.random.PRNGKey(0))
  return frozen, model.method.init(jax.random.PRNGKey(1), frozen)


def jax_steps(model: BaseModel, frozen: dict, prompt: dict, batch: dict, full_ft: bool = True,
              options: dict | None = None) -> dict[str, tuple[Callable, Any]]:
  """name -> (compiled fn, args) for: forward, prompt train step, full fine-tuning step; `options` are XLA
  debug options for this compilation only (e.g. the matmul library), so variants run side by side."""
  optimizer = optim.make_optimizer()  # The paper's Adafactor (decay 0.8, no param scaling, wd 1e-5, lr 0.3).
  state = init_train_state(prompt, optimizer.tx, jax.random.PRNGKey(1))
  forward = jax.jit(lambda fz, p, bt: model.loss_fn(fz, p, bt)[0])
  train = jax.jit(functools.partial(step_lib.train_step, model, optimizer))

  full_tx = optim.adafactor()
  all_params = {'frozen': frozen, 'prompt': prompt}
  full_state = full_tx.init(all_params)

  def full_step(params, opt_state, bt):
    loss, grads = jax.value_and_grad(lambda pr: model.loss_fn(pr['frozen'], pr['prompt'], bt)[0])(params)
    updates, opt_state = full_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  full = jax.jit(full_step)
  out = {}
  for name, fn, args in (('forward', forward, (frozen, prompt, batch)), ('train_step', train, (state, frozen, batch)),
                         ('full_ft_step', full, (all_params, full_state, batch))):
    if name == 'full_ft_step' and not full_ft:
      continue
    out[name] = (fn.lower(*args).compile(compiler_options=options), args)
  return out


# --------------------------------------------------------------------------------------------------------------
# Hugging Face PEFT reference (torch CPU).
# --------------------------------------------------------------------------------------------------------------
def peft_model(cfg: T5Config, prompt_length: int, threads: int):
  """(PEFT prompt-tuning model over a same-sized randomly initialised T5 in train mode, transformers Adafactor on
  its prompt with the paper's settings, version info)."""
  import torch
  import transformers
  from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
  from transformers.optimization import Adafactor

  torch.set_num_threads(threads)
  base = hf_twins.random_hf_t5(cfg, seed=0)
  model = get_peft_model(
      base,
      PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=prompt_length,
                         prompt_tuning_init=PromptTuningInit.RANDOM))
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = Adafactor(trainable, lr=0.3, decay_rate=-0.8, weight_decay=1e-5, clip_threshold=1.0, scale_parameter=False,
                  relative_step=False, warmup_init=False)
  info = {
      'trainable_params': sum(p.numel() for p in trainable), 'torch': torch.__version__,
      'transformers': transformers.__version__
  }
  return model, opt, info


def peft_steps(cfg: T5Config, s: Shape, batch: dict[str, np.ndarray], threads: int) -> tuple[dict[str, Callable], dict]:
  """({name: blocking callable}, version info) for PEFT prompt tuning on the same-sized T5: forward (no grad)
  and train step (forward + backward + Adafactor on the prompt with the paper's settings)."""
  import torch

  model, opt, info = peft_model(cfg, s.prompt, threads)
  inputs = {
      'input_ids': torch.from_numpy(batch['encoder_input_tokens']).long(), 'attention_mask': torch.from_numpy(
          (batch['encoder_input_tokens']
           > 0).astype(np.int64)), 'decoder_input_ids': torch.from_numpy(batch['decoder_input_tokens']).long(),
      'labels': torch.from_numpy(batch['decoder_target_tokens']).long()
  }

  def forward():
    with torch.no_grad():
      return model(**inputs).loss.item()

  def train_step():
    loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()

  return {'peft_forward': forward, 'peft_train_step': train_step}, info


# --------------------------------------------------------------------------------------------------------------
# Bytes of gradient + optimizer state (exact, from shapes).
# --------------------------------------------------------------------------------------------------------------
def tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def state_bytes(model: BaseModel, frozen: dict, prompt: dict, batch: dict) -> dict[str, int]:
  """ours: the prompt gradient our step differentiates + its optimizer state.
  reference: google-research/prompt-tuning on t5x: the gradient of every parameter (t5x's train step
    differentiates the whole tree), then a MultiOptimizer that keeps Adafactor state for the prompt only.
  masked_all: full gradient + Adafactor state for every parameter (a plain optimizer with masked updates)."""
  optimizer = optim.make_optimizer()
  grads = jax.eval_shape(lambda p: step_lib.compute_gradients(model, frozen, p, batch, None)[2], prompt)
  opt_state = jax.eval_shape(optimizer.tx.init, prompt)
  all_params = {'frozen': frozen, 'prompt': prompt}
  full_state = jax.eval_shape(optim.adafactor().init, all_params)
  ours_grad, ours_opt = tree_bytes(grads), tree_bytes(opt_state)
  full_grad = tree_bytes(all_params)
  return {
      'ours_grad': ours_grad, 'ours_opt': ours_opt, 'ours': ours_grad + ours_opt, 'reference_grad': full_grad,
      'reference_opt': ours_opt, 'reference': full_grad + ours_opt, 'masked_all_opt': tree_bytes(full_state),
      'masked_all': full_grad + tree_bytes(full_state)
  }


# --------------------------------------------------------------------------------------------------------------
# Timing: every candidate once per round, rounds rotated, best of N (shared, noisy CPU).
# --------------------------------------------------------------------------------------------------------------
def race(candidates: dict[str, tuple[Callable, int]], reps: int, warmup: int = 1) -> dict[str, dict]:
  """Times `fn` called `repeat` times in a row per sample (repeats even out the work per sample, so short
  candidates do not profit more from quiet moments of a shared CPU), one sample of every candidate per round,
  rounds rotated. Returns per candidate the wall and process-CPU seconds of one call for every round."""
  names = list(candidates)
  for name in names:
    for _ in range(warmup):
      candidates[name][0]()
  times = {n: {'wall': [], 'cpu': []} for n in names}
  for r in range(reps):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, repeat = candidates[name]
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(repeat):
        fn()
      times[name]['wall'].append((time.perf_counter() - wall) / repeat)
      times[name]['cpu'].append((time.process_time() - cpu) / repeat)
  return times


def blocking(compiled, args) -> Callable:
  return lambda: jax.block_until_ready(compiled(*args))


def peak_candidate(size: int, options: dict | None = None) -> tuple[Callable, int]:
  """A jitted [size, size] @ [size, size] float32 matmul (random inputs) and its FLOPs."""
  a = jax.random.normal(jax.random.PRNGKey(2), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(3), (size, size), jnp.float32)
  return blocking(jax.jit(jnp.dot).lower(a, b).compile(compiler_options=options), (a, b)), 2 * size**3


# --------------------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------------------
# XLA:CPU in jaxlib 0.10.2 sends dots to YNNPACK by default; an empty fusion-type list sends them to Eigen.
EIGEN = {'xla_cpu_experimental_ynn_fusion_type': ''}
# name -> (label, gather embedding?, XLA options)
VARIANTS = {
    'onehot': ('ours, one-hot Embed (TPU default)', False, None),
    'gather': ('ours, gather Embed (CPU/GPU default)', True, None), 'onehot_eigen':
        ('ours, one-hot, Eigen dots', False, EIGEN), 'gather_eigen': ('ours, gather Embed, Eigen dots', True, EIGEN)
}
TARGETS = {'p1': 2.2, 'p2': 0.80, 'p3': 1.4}


def summarise(times: dict[str, dict], flops: dict[str, int], xla: dict[str, float], peak_flops: int, s: Shape,
              variants: list[str], peft: bool, clock: str) -> dict[str, Any]:
  """Ratios from the best (minimum) sample of each candidate on one clock ('wall' or process 'cpu')."""
  best = {k: min(v[clock]) for k, v in times.items()}
  best['peak'] = min(best['peak_ynn'], best['peak_eigen'])  # The faster matmul library sets the peak.
  peak = peak_flops / best['peak']
  model_flops = flops['forward'] + flops['prompt_backward']
  out: dict[str, Any] = {
      'peak_gflops': peak / 1e9, 'best_s': best,
      'peak_gflops_by_library': {k[5:]: peak_flops / best[k] / 1e9 for k in ('peak_ynn', 'peak_eigen')},
      'median_s': {k: float(np.median(v[clock])) for k, v in times.items()}
  }
  for v in variants:
    step, fwd = best[f'{v}_train_step'], best[f'{v}_forward']
    executed = model_flops + (0 if VARIANTS[v][1] else flops['onehot_forward'])
    row = {
        'p1_step_over_forward': step / fwd, 'full_ft_over_forward': best.get(f'{v}_full_ft_step', float('nan')) / fwd,
        'p2_util_model_flops': model_flops / step / peak, 'util_executed_matmul_flops': executed / step / peak,
        'util_xla_cost_flops': xla[f'{v}_train_step'] / step / peak, 'tokens_per_s': s.tokens / step
    }
    if peft:
      row['p3_speedup_vs_peft'] = best['peft_train_step'] / step
    out[v] = row
  if peft:
    out['peft'] = {
        'p1_step_over_forward': best['peft_train_step'] / best['peft_forward'],
        'p2_util_model_flops': model_flops / best['peft_train_step'] / peak,
        'tokens_per_s': s.tokens / best['peft_train_step'], 'p3_speedup_vs_peft': 1.0
    }
  return out


def print_table(r: dict[str, Any], clock: str, variants: list[str]) -> None:
  b = r['best_s']
  unit = 'wall s' if clock == 'wall' else 'CPU s'
  libs = ', '.join(f'{k} {v:.1f}' for k, v in r['peak_gflops_by_library'].items())
  print(f"\n[{clock} clock, best of N] float32 matmul peak (jnp.dot, best library): {r['peak_gflops']:.1f} GFLOP/s"
        f" ({libs})" + ('' if clock == 'wall' else ' per busy second of all threads'))
  print(f"{'':34s} {'fwd ' + unit:>10s} {'step ' + unit:>11s} {'P1 step/fwd':>11s} {'full/fwd':>8s} "
        f"{'P2 util':>7s} {'exec util':>9s} {'XLA util':>8s} {'tok/s':>7s} {'P3 xPEFT':>8s}")
  rows = [(VARIANTS[v][0], r[v], f'{v}_') for v in variants]
  if 'peft' in r:
    rows.append(('HF PEFT PromptTuning (torch)', r['peft'], 'peft_'))
  for label, x, key in rows:
    util = lambda k: f'{x[k]:.1%}' if k in x else ''
    full = f"{x['full_ft_over_forward']:.2f}" if 'full_ft_over_forward' in x else ''
    print(f"{label:34s} {b[key + 'forward']:10.3f} {b[key + 'train_step']:11.3f} {x['p1_step_over_forward']:11.2f} "
          f"{full:>8s} {util('p2_util_model_flops'):>7s} {util('util_executed_matmul_flops'):>9s} "
          f"{util('util_xla_cost_flops'):>8s} {x['tokens_per_s']:7.0f} "
          f"{x.get('p3_speedup_vs_peft', float('nan')):8.2f}")


def print_memory(mem: dict[str, int]) -> None:
  print(f"\nP4 gradient + optimizer state bytes: ours {mem['ours']:,} (grad {mem['ours_grad']:,} + Adafactor "
        f"{mem['ours_opt']:,})\n   reference full-gradient-then-mask (t5x MultiOptimizer, state for the prompt "
        f"only): {mem['reference']:,} ({mem['reference'] / mem['ours']:.0f}x)\n   full gradient + Adafactor "
        f"state for every param: {mem['masked_all']:,} ({mem['masked_all'] / mem['ours']:.0f}x)")


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='2 timed rounds and a 2048 peak matmul')
  parser.add_argument('--reps', type=int, default=None, help='timed rounds (default 5, --quick 2)')
  parser.add_argument('--peak-size', type=int, default=None, help='peak matmul size (default 4096)')
  parser.add_argument('--variants', default='onehot,gather,gather_eigen', help='comma list of: ' + ', '.join(VARIANTS))
  parser.add_argument('--no-peft', action='store_true', help='skip the torch / PEFT reference')
  parser.add_argument('--no-full-ft', action='store_true', help='skip the full fine-tuning comparison step')
  parser.add_argument('--torch-threads', type=int, default=2)
  args = parser.parse_args(argv)
  reps = args.reps or (2 if args.quick else 5)
  peak_size = args.peak_size or (2048 if args.quick else 4096)
  variants = [v for v in args.variants.split(',') if v]
  for v in variants:
    if v not in VARIANTS:
      parser.error(f'unknown variant {v!r}; expected one of {", ".join(VARIANTS)}')

  cfg, s = get_config('t5_1_1_small'), Shape()
  np_batch = make_batch(cfg, s)
  batch = {k: jnp.asarray(v) for k, v in np_batch.items()}
  flops = matmul_flops(cfg, s)
  model_flops = flops['forward'] + flops['prompt_backward']
  candidates, xla, losses = {}, {}, {}
  start = time.perf_counter()
  frozen, prompt = init_params(make_model(cfg, s), s)  # The variants share parameters (same tree).
  for v in variants:
    _, gather, options = VARIANTS[v]
    model = make_model(cfg, s, gather=gather)
    for name, (compiled, fn_args) in jax_steps(model, frozen, prompt, batch, not args.no_full_ft, options).items():
      candidates[f'{v}_{name}'] = (blocking(compiled, fn_args), 2 if name == 'forward' else 1)
      xla[f'{v}_{name}'] = xla_flops(compiled)
      if name == 'forward':
        losses[v] = float(compiled(*fn_args))
  mem = state_bytes(model, frozen, prompt, batch)
  for name, options in (('peak_ynn', None), ('peak_eigen', EIGEN)):
    peak_fn, peak_flops = peak_candidate(peak_size, options)
    candidates[name] = (peak_fn, max(1, round(model_flops / peak_flops)))
  info = {}
  if not args.no_peft:
    peft_fns, info = peft_steps(cfg, s, np_batch, args.torch_threads)
    candidates.update(peft_forward=(peft_fns['peft_forward'], 2), peft_train_step=(peft_fns['peft_train_step'], 1))
  print(
      f'compiled / built in {time.perf_counter() - start:.0f} s; timing {reps} rounds of {len(candidates)} '
      f'candidates (XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, jax {jax.__version__}, '
      f'{os.cpu_count()} CPUs)', flush=True)
  times = race(candidates, reps)
  result = {
      clock: summarise(times, flops, xla, peak_flops, s, variants, not args.no_peft, clock) for clock in ('wall', 'cpu')
  }
  result.update(samples_s=times, flops_g={k: v / 1e9 for k, v in flops.items()}, model_gflops_step=model_flops / 1e9,
                xla_gflops={k: v / 1e9 for k, v in xla.items()}, state_bytes=mem, reps=reps, losses=losses,
                peak_size=peak_size, shape=dataclasses.asdict(s), xla_flags=os.environ.get('XLA_FLAGS', ''), **info)
  print('forward loss per variant (must agree): ' + ', '.join(f'{k} {v:.6f}' for k, v in losses.items()))
  g = {k: v / 1e9 for k, v in flops.items()}
  print(f"\nmodel FLOPs per train step: {model_flops / 1e9:.1f} G (forward {g['forward']:.1f} + prompt backward "
        f"{g['prompt_backward']:.1f}; one-hot lookups +{g['onehot_forward']:.1f}); XLA cost analysis: " +
        ', '.join(f'{k} {v / 1e9:.1f} G' for k, v in xla.items()))
  for clock in ('wall', 'cpu'):
    print_table(result[clock], clock, variants)
  print(f"targets: P1 <= {TARGETS['p1']}x, P2 >= {TARGETS['p2']:.0%}, P3 >= {TARGETS['p3']}x PEFT")
  print_memory(mem)
  print('JSON ' + json.dumps(result, sort_keys=True, default=float))
  return result


if __name__ == '__main__':
  main()
