"""Memory plan of the prompt-tuning train step for T5 1.1 XL / XXL and causal LMs (Llama 3.1 8B / 70B ...) on TPU
slices, by compilation on CPU.

For each mesh size (one subprocess each: the simulated device count is fixed when jax is imported) and each
(data, model) layout with 1-D (t5x default) or 2-D (`embed` also over 'data') parameter sharding, the step is
compiled with abstract arguments (nothing allocated; `bench/plan_step.py`) and XLA's per-device
memory analysis is read. Prints a table and the smallest slice of each TPU generation that fits. Run from the
repo root (about 20-40 s per compile on 2 CPU cores):

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/memory_plan.py [--models xl,xxl] [--devices 4,8,16,32]
      [--input_length 512] [--target_length 16]
  # causal LMs (any named config; one stream of input + target tokens):
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/memory_plan.py --models llama3_1_8b,llama3_1_70b \
      --input_length 1008 --target_length 16 --devices 8,16,32
      [--no-f32] [--json OUT.json] [--markdown OUT.md] [--num_microbatches N] [--activation_dims 2]
      [--dropout_rate 0.1] [--remat_policy full] [--methods prompt_tuning,prefix_tuning,p_tuning_v2]

Columns (GiB per device): `args` frozen bf16 weights + prompt/optimizer state + batch (exact on TPU);
`temp` XLA:CPU temp of the bf16 step; `CPU plan` = args + temp (the conservative figure the slice choice
uses); `f32 temp` temp of the same step compiled in float32; `TPU est.` = args + f32 temp / 2 .. args + f32
temp. Why: XLA:CPU computes bf16 in f32 and keeps an f32 copy of every stacked bf16 weight
(CPU bf16 temp - f32 temp = 1.1-3.5 x frozen bytes), a TPU does neither, and a TPU's bf16 activations are
half the f32 ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxprompt.models.families import named_configs  # noqa: E402  (the repo root on the path first)

GiB = 1024**3

# (generation, GiB of HBM per JAX device, {slice name: JAX devices}); v3 devices are cores, v4/v5e chips.
SLICES = (
    ('v3', 16, {'v3-8': 8, 'v3-32': 32}),
    ('v4', 32, {'v4-8': 4, 'v4-16': 8, 'v4-32': 16, 'v4-64': 32}),
    ('v5e', 16, {'v5litepod-4': 4, 'v5litepod-8': 8, 'v5litepod-16': 16, 'v5litepod-32': 32}),
)

# (model_parallel, parameter_partitioning_dims) per mesh size: t5x's 1-D rules and 2-D variants.
LAYOUTS = {
    4: ((4, 1), (2, 2)),
    8: ((8, 1), (4, 1), (4, 2), (2, 2), (1, 2)),
    16: ((16, 1), (8, 1), (8, 2), (4, 2), (2, 2)),
    32: ((8, 1), (8, 2), (16, 2), (4, 2), (2, 2)),
}


def worker(num_devices: int, requests: list[dict], f32: bool) -> None:
  """Runs inside a process with `num_devices` simulated devices; prints one JSON line per plan."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from bench import plan_step as memory_plan  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == num_devices, jax.devices()
  for kwargs in requests:
    row = {}
    for dtype in (('bfloat16', 'float32') if f32 else ('bfloat16',)):
      request = memory_plan.PlanRequest(**kwargs, dtype=getattr(jnp, dtype))
      try:
        plan = memory_plan.plan_train_step(request)
      except Exception as e:  # a layout that does not partition is a result, not a crash
        row[dtype] = {'error': f'{type(e).__name__}: {str(e)[:200]}'}
        continue
      row[dtype] = plan.as_dict()
    print(json.dumps(row), flush=True)


def run_mesh(num_devices: int, requests: list[dict], f32: bool) -> list[dict]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
             PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  args = [sys.executable, __file__, '--worker', str(num_devices), '--requests', json.dumps(requests)]
  if not f32:
    args.append('--no-f32')
  proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(f'{num_devices}-device worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]


@dataclasses.dataclass
class Row:
  model: str
  devices: int
  data: int
  model_parallel: int
  dims: int
  args: float
  temp: float
  f32_temp: float | None
  compile_s: float

  @property
  def cpu_plan(self) -> float:
    return self.args + self.temp

  @property
  def tpu_range(self) -> tuple[float, float] | None:
    if self.f32_temp is None:
      return None
    return self.args + self.f32_temp / 2, self.args + self.f32_temp


def to_row(result: dict) -> Row | None:
  bf16, f32 = result['bfloat16'], result.get('float32', {})
  if 'error' in bf16:
    return None
  method = '' if bf16.get('method', 'prompt_tuning') == 'prompt_tuning' else f" {bf16['method']}"
  return Row(model=bf16['model'].removeprefix('t5_1_1_').upper() + method, devices=bf16['num_devices'],
             data=bf16['data_parallel'], model_parallel=bf16['model_parallel'],
             dims=bf16['parameter_partitioning_dims'], args=bf16['argument_bytes'] / GiB, temp=bf16['temp_bytes'] / GiB,
             f32_temp=f32['temp_bytes'] / GiB if 'temp_bytes' in f32 else None, compile_s=bf16['compile_seconds'])


def table(rows: list[Row]) -> str:
  lines = [
      '| model | devices | (data, model) | params | args | temp | **CPU plan** | f32 temp | TPU est. |',
      '|---|---|---|---|---|---|---|---|---|'
  ]
  for r in rows:
    est = '-' if r.tpu_range is None else f'{r.tpu_range[0]:.1f}-{r.tpu_range[1]:.1f}'
    f32 = '-' if r.f32_temp is None else f'{r.f32_temp:.1f}'
    lines.append(f'| {r.model} | {r.devices} | ({r.data}, {r.model_parallel}) | {r.dims}-D | {r.args:.1f} | '
                 f'{r.temp:.1f} | **{r.cpu_plan:.1f}** | {f32} | {est} |')
  return '\n'.join(lines)


def smallest_slices(rows: list[Row]) -> str:
  """Per model and TPU generation: the smallest planned slice whose best layout fits (CPU plan; TPU est.)."""
  lines = [
      '| model | generation (GiB/device) | smallest slice, CPU plan | best layout there | by TPU est. (upper) |',
      '|---|---|---|---|---|'
  ]
  for model in dict.fromkeys(r.model for r in rows):
    for gen, hbm, slices in SLICES:
      by_cpu, by_tpu = None, None
      for name, devices in sorted(slices.items(), key=lambda kv: kv[1]):
        candidates = [r for r in rows if r.model == model and r.devices == devices]
        best = min(candidates, key=lambda r: r.cpu_plan, default=None)
        if by_cpu is None and best and best.cpu_plan <= hbm:
          by_cpu = (name, best)
        if by_tpu is None and any(r.tpu_range and r.tpu_range[1] <= hbm for r in candidates):
          by_tpu = name
      cpu_text = by_cpu[0] if by_cpu else 'none planned'
      layout = (f'({by_cpu[1].data}, {by_cpu[1].model_parallel}) {by_cpu[1].dims}-D: {by_cpu[1].cpu_plan:.1f} GiB'
                if by_cpu else '-')
      lines.append(f'| {model} | {gen} ({hbm}) | {cpu_text} | {layout} | {by_tpu or "none planned"} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='xl,xxl')
  parser.add_argument('--methods', default='prompt_tuning',
                      help='comma list: prompt_tuning, prefix_tuning, p_tuning_v2 (bench/plan_step.METHODS)')
  parser.add_argument('--devices', default='4,8,16,32')
  parser.add_argument('--no-f32', dest='f32', action='store_false', help='skip the float32 compiles (TPU est.)')
  parser.add_argument('--remat_policy', default='full')
  parser.add_argument('--num_microbatches', type=int, default=1)
  parser.add_argument('--activation_dims', type=int, default=1)
  parser.add_argument('--dropout_rate', type=float, default=0.1)
  parser.add_argument('--input_length', type=int, default=512, help='T5 inputs; a causal stream holds both')
  parser.add_argument('--target_length', type=int, default=16)
  parser.add_argument('--json', help='write all raw plans here')
  parser.add_argument('--markdown', help='write the two tables here')
  parser.add_argument('--worker', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--requests', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args.worker, json.loads(args.requests), args.f32)
    return

  start, results = time.time(), []
  for devices in (int(d) for d in args.devices.split(',')):
    requests = [
        dict(model=m if m in named_configs() else f't5_1_1_{m}', model_parallel=mp, input_length=args.input_length,
             target_length=args.target_length, parameter_partitioning_dims=dims, remat_policy=args.remat_policy,
             num_microbatches=args.num_microbatches, activation_partitioning_dims=args.activation_dims,
             dropout_rate=args.dropout_rate, method=method)
        for m in args.models.split(',')
        for method in args.methods.split(',')
        for mp, dims in LAYOUTS[devices]
    ]
    print(f'compiling {len(requests)} layouts on {devices} devices ...', file=sys.stderr, flush=True)
    results += run_mesh(devices, requests, args.f32)
  rows = [r for r in map(to_row, results) if r is not None]
  errors = [res['bfloat16']['error'] for res in results if 'error' in res['bfloat16']]
  rows.sort(key=lambda r: (r.model, r.devices, -r.model_parallel, r.dims))
  text = (f'{args.models}: batch 32, inputs {args.input_length} + prompt 100, targets {args.target_length}, '
          f'bf16 frozen weights, scan + remat '
          f'{args.remat_policy!r}, dropout {args.dropout_rate}, microbatches {args.num_microbatches}, '
          f'activation dims {args.activation_dims}.\n'
          f'GiB per device.\n\n{table(rows)}\n\n{smallest_slices(rows)}\n')
  print(text)
  for e in errors:
    print('layout not compiled:', e)
  print(f'{len(results)} layouts in {time.time() - start:.0f} s', file=sys.stderr)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  if args.markdown:
    pathlib.Path(args.markdown).write_text(text)


if __name__ == '__main__':
  main()
