"""Partitioning: t5x's logical axis rules, the ('data', 'model') mesh, and parameter shardings.

Logical axis names are t5x's (`batch`, `vocab`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`, `relpos_buckets`,
`abspos_buckets`, `length`, `layers`), grouped-query attention's `kv_heads`, the prompt's (`prompt`,
`prompt_embed`) and a task head's `labels`. Rules map them to mesh axes; the model only
speaks logical names.

Use a mesh with `use_mesh(mesh, rules)`: it sets the mesh with `jax.set_mesh` (the older `with mesh:` silently
turns flax's sharding constraints off) and activates the logical rules.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprompt.errors import ConfigError

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# The prompt is tiny ([length, embed]): replicate it by default, like the reference implementation.
PROMPT_RULES: LogicalRules = (('prompt', None), ('prompt_embed', None))


def standard_logical_axis_rules(activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
                                additional_rules: LogicalRules | None = None) -> list:
  """t5x's standard rules. `parameter_partitioning_dims=2` also shards `embed` over `data` (2-D sharding)."""
  head = [('batch', 'data'), ('vocab', 'model')]
  tail = [('mlp', 'model'), ('heads', 'model'), ('kv', None), ('joined_kv', 'model')]
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  # Same order as t5x, for readable diffs against it.
  embed_rules = {
      (2, 1): [('embed', 'model')],
      (1, 2): [('embed', 'data')],
      (2, 2): [('embed', 'model'), ('embed', 'data')],
  }
  if dims == (1, 1):
    rules = head + [('embed', None)] + tail
  elif dims in embed_rules:
    rules = head + tail + embed_rules[dims]
  else:
    raise ConfigError(f'activation_partitioning_dims={dims[0]}, parameter_partitioning_dims={dims[1]} is not '
                      'supported (each must be 1 or 2)')
  # `labels`: a task head's label axis (the encoder-only family's), small: replicated.
  rules += [('relpos_buckets', None), ('abspos_buckets', None), ('length', None), ('layers', None), ('stack', None),
            ('mlp_activations', None), ('labels', None)]
  # Grouped-query attention's key/value heads follow the query heads onto 'model'. Where num_kv_heads does not
  # divide the model axis XLA pads the activations (correct, some waste); a ('kv_heads', None) prompt rule,
  # which comes first, replicates them instead. Their kernels shard as 'joined_kv' (num_kv_heads * head_dim).
  rules += [('kv_heads', 'model')]
  return rules + list(additional_rules or [])


@gin.configurable(module='jaxprompt')
def prompt_logical_axis_rules(activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
                              prompt_rules: LogicalRules = PROMPT_RULES) -> list:
  """Standard rules plus the prompt's (prompt rules first, so they win over any later catch-all).

  Gin: `jaxprompt.prompt_logical_axis_rules.parameter_partitioning_dims = 2` shards `embed` over 'data' too.
  """
  return list(prompt_rules) + standard_logical_axis_rules(activation_partitioning_dims, parameter_partitioning_dims)


def create_mesh(model_parallel: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 2-D mesh ('data', 'model') over `devices` (default: all), `model_parallel` devices per model replica.

  Axis types are Auto (flax's logical constraints fail under Explicit axes). Devices are taken in
  `jax.devices()` order, which groups each process's devices, so the 'model' axis stays within a host
  whenever `model_parallel` divides the local device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ConfigError(f'model_parallel={model_parallel} must divide the number of devices ({len(devices)})')
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // model_parallel, model_parallel)
  return Mesh(grid, ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Activates `mesh` and the logical axis `rules` for tracing (constraints) and compilation."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_specs(abstract_variables: Any) -> Any:
  """Tree of logical PartitionSpecs (axis names) from boxed variables, e.g. `jax.eval_shape(model.init, ...)`."""
  return nn.get_partition_spec(abstract_variables)


def logical_to_shardings(logical: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, PartitionSpec('data'))


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: restore targets for orbax, or abstract args for `.lower()`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def shardings_for(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules, *args, **kwargs) -> tuple:
  """Abstract variables (unboxed ShapeDtypeStructs) and their NamedShardings, computed without allocating."""
  boxed = jax.eval_shape(init_fn, *args, **kwargs)
  shardings = logical_to_shardings(logical_specs(boxed), mesh, rules)
  return nn.meta.unbox(boxed), shardings
