"""Memory plan by compilation: per-device bytes of the prompt-tuning train step, with nothing allocated.

The step is lowered with `jax.ShapeDtypeStruct` arguments that carry their shardings (bfloat16 frozen
weights, float32 prompt and optimizer state, an int32 batch split over 'data') and compiled for the current
devices; XLA's `memory_analysis()` then gives the bytes one device needs. Run it under simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, set before jax is imported) to plan a TPU slice.

Reading the CPU figures for a TPU:
  * arguments are exact: the frozen weights are bf16 arguments on both backends (plus the tiny f32 prompt,
    optimizer state and batch);
  * temp (activations saved for the backward pass, the working set of one rematerialised layer) is
    overstated: XLA:CPU computes bf16 in f32 and hoists an f32 copy of every stacked bf16 weight out of the
    layer loop (measured: bf16 temp - float32 temp = 1.1-3.5 x frozen bytes). A TPU does neither, and its
    bf16 activations are half the f32 ones, so TPU temp is roughly float32 temp / 2 .. float32 temp
    (compile with `dtype=jnp.float32` to get it).
Only a scanned stack (`scan_layers=True`) with per-layer remat shows remat to XLA:CPU; unrolled layers let
the CPU compiler drop the remat barriers, and the figure then means nothing.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models.base import BaseModel
from jaxprompt.models.families import build_model, named_config
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import compiled as sharded
from jaxprompt.runtime import optim
from jaxprompt.runtime.state import init_train_state


@dataclasses.dataclass(frozen=True)
class PlanRequest:
  """One train-step configuration to plan (defaults: the paper's XXL run). `model` is any family's named
  config; a decoder-only model reads one stream of input_length + target_length tokens."""
  model: str = 't5_1_1_xxl'
  model_parallel: int = 8
  parameter_partitioning_dims: int = 1  # 2: `embed` also sharded over 'data'
  activation_partitioning_dims: int = 1  # 2: activations' `embed` sharded over 'model' (t5x's option)
  batch_size: int = 32
  input_length: int = 512
  target_length: int = 16
  prompt_length: int = 100
  remat_policy: str = 'full'
  scan_layers: bool = True
  num_microbatches: int = 1
  dtype: Any = jnp.bfloat16  # frozen weights and activations
  dropout_rate: float = 0.1  # as runs/prompt_tuning.gin trains (adds ~1 GiB on XXL/8 devices vs 0)
  method: str = 'prompt_tuning'  # a key of METHODS; `prompt_length` is its length


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Per-device bytes of one compiled train step (`memory_analysis()` of device 0's program)."""
  request: PlanRequest
  num_devices: int
  data_parallel: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs that reuse donated argument buffers (the train state)
  frozen_bytes: int  # frozen weights one device holds (exact; part of argument_bytes)
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Arguments + temp: what must fit in one device's memory (outputs are donated-state aliases + metrics)."""
    return self.argument_bytes + self.temp_bytes

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  def as_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self.request)
    out['dtype'] = jnp.dtype(self.request.dtype).name
    out.update(num_devices=self.num_devices, data_parallel=self.data_parallel, argument_bytes=self.argument_bytes,
               temp_bytes=self.temp_bytes, output_bytes=self.output_bytes, alias_bytes=self.alias_bytes,
               frozen_bytes=self.frozen_bytes, total_bytes=self.total_bytes, peak_bytes=self.peak_bytes,
               compile_seconds=round(self.compile_seconds, 2))
    return out


def _check(request: PlanRequest, num_devices: int) -> int:
  """Validates the mesh and batch against the device count; returns the data-parallel size."""
  if request.model_parallel < 1 or num_devices % request.model_parallel:
    raise ConfigError(f'model_parallel={request.model_parallel} must divide the number of devices '
                      f'({num_devices}); set XLA_FLAGS=--xla_force_host_platform_device_count before importing jax')
  data = num_devices // request.model_parallel
  per_micro = request.batch_size // max(request.num_microbatches, 1)
  if request.batch_size % max(request.num_microbatches, 1) or per_micro % data:
    raise ConfigError(f'batch_size={request.batch_size} with num_microbatches={request.num_microbatches} does '
                      f'not split over data_parallel={data} ({num_devices} devices / model_parallel='
                      f'{request.model_parallel})')
  return data


# The methods a plan can be made for: their gin factories `(config, eos_id, *, length, ...)`.
METHODS = {
    'prompt_tuning': 'jaxprompt.methods.prompt_tuning:prompt_tuning',
    'prefix_tuning': 'jaxprompt.methods.prefix_tuning:prefix_tuning',
    'p_tuning_v2': 'jaxprompt.methods.prefix_tuning:p_tuning_v2'
}


def plan_model(request: PlanRequest) -> BaseModel:
  """The tuned model of `request` (activations in `request.dtype`, the method's parameters f32)."""
  config = named_config(request.model, dtype=request.dtype, scan_layers=request.scan_layers,
                        remat_policy=request.remat_policy, dropout_rate=request.dropout_rate,
                        one_hot_embedding=True)  # what runs on the TPU this plan is for
  if request.method not in METHODS:
    raise ConfigError(f'no memory plan for method {request.method!r}; expected one of {", ".join(METHODS)}')
  module, name = METHODS[request.method].split(':')
  factory = getattr(importlib.import_module(module), name)
  return build_model(config, factory(config, 1, length=request.prompt_length))


def abstract_args(request: PlanRequest, steps: sharded.ShardedSteps, optimizer: optim.Optimizer) -> tuple:
  """(state, frozen, batch) as ShapeDtypeStructs with shardings; frozen weights in `request.dtype`."""
  model = steps.model
  network = model.init_abstract(1, 8, 4)['params']
  frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, request.dtype, sharding=s), nn.meta.unbox(network),
                        steps.frozen_shardings)
  trainable = nn.meta.unbox(steps.model.method.abstract(network))
  state = jax.eval_shape(lambda t, rng: init_train_state(t, optimizer.tx, rng), trainable, jax.random.PRNGKey(0))
  state = partitioning.abstract_with_shardings(state, steps.state_shardings(state))
  widths = model.feature_widths(request.input_length, request.target_length)
  batch = {
      k: jax.ShapeDtypeStruct((request.batch_size, width), jnp.float32 if k == 'decoder_loss_weights' else jnp.int32,
                              sharding=steps.batch_sharding) for k, width in widths.items()
  }
  return state, frozen, batch


def frozen_bytes_per_device(frozen: Any) -> int:
  """Bytes of the frozen ShapeDtypeStructs that one device holds (largest shard of each leaf)."""
  total = 0
  for leaf in jax.tree.leaves(frozen):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
  return total


def plan_train_step(request: PlanRequest, devices: list[jax.Device] | None = None) -> MemoryPlan:
  """Lowers and compiles the train step of `request` for `devices` (default: all) and reads its memory."""
  devices = list(jax.devices() if devices is None else devices)
  data = _check(request, len(devices))
  model = plan_model(request)
  optimizer = optim.make_optimizer()
  mesh = partitioning.create_mesh(request.model_parallel, devices)
  rules = partitioning.prompt_logical_axis_rules(request.activation_partitioning_dims,
                                                 request.parameter_partitioning_dims)
  steps = sharded.ShardedSteps(model, optimizer, mesh, rules, num_microbatches=request.num_microbatches)
  state, frozen, batch = abstract_args(request, steps, optimizer)
  start = time.perf_counter()
  compiled = steps.lower_train_step(state, frozen, batch).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  return MemoryPlan(request=request, num_devices=len(devices), data_parallel=data,
                    argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                    output_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
                    frozen_bytes=frozen_bytes_per_device(frozen), compile_seconds=seconds)


def main(argv: list[str] | None = None) -> None:
  """Prints one plan as JSON; run under N simulated devices, e.g. for a v3-8:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
    python -m bench.plan_step --model t5_1_1_xxl --model_parallel 4 --parameter_partitioning_dims 2
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description='Per-device memory of the prompt-tuning train step (compiled).')
  for field in dataclasses.fields(PlanRequest):
    if field.name == 'dtype':
      parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
    elif field.type == 'bool':
      parser.add_argument(f'--{field.name}', type=lambda s: s.lower() in ('1', 'true', 'yes'), default=field.default)
    else:
      parser.add_argument(f'--{field.name}', type=type(field.default), default=field.default)
  args = vars(parser.parse_args(argv))
  args['dtype'] = getattr(jnp, args['dtype'])
  print(json.dumps(plan_train_step(PlanRequest(**args)).as_dict()))


if __name__ == '__main__':
  main()
