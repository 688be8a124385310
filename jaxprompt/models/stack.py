"""Running a stack of identical layers: unrolled (`layers_N`) or one `nn.scan` (`layers`), with optional remat,
handing a per-layer hook each layer its own slice. Shared by every network family (`t5.py`, `causal_lm.py`)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models.hooks import LayerHook

Array = jax.Array

REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _scan_body(layer_cls: type[nn.Module]) -> type[nn.Module]:
  """Adapts a layer `x -> x` to scan's `carry -> (carry, None)` contract."""

  class ScanBody(layer_cls):

    def __call__(self, x, *args):
      return super().__call__(x, *args), None

  ScanBody.__name__ = layer_cls.__name__
  return ScanBody


def run_stack(cfg: Any, layer_cls: type[nn.Module], num_layers: int, x: Array, args: tuple,
              hook: LayerHook | None = None, hook_context: Array | None = None, **layer_kwargs: Any) -> Array:
  """Applies `num_layers` layers named `layers_N` (or one scanned `layers`), with optional per-layer remat.

  `cfg` is the family's config (its `scan_layers` and `remat_policy` decide the layout); each layer is built as
  `layer_cls(cfg, name=..., **layer_kwargs)` and called as `layer(x, *args)`, or, with a hook, as
  `layer(x, *args, hook_context, hook_slice, i)`. A per-layer hook (array leaves [layers, ...]) reaches layer i
  as its slice plus the index i: a Python int when unrolled, a scanned `arange` element under `nn.scan`.
  `hook_context` is broadcast to every layer beside it (T5: the relative-position table its prefix bias needs).
  """
  if hook is not None:
    depths = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(hook)}
    if depths - {num_layers}:
      raise ConfigError(f'every array of a per-layer hook needs a leading layers axis of {num_layers}; '
                        f'{type(hook).__name__} has leading sizes {sorted(depths, key=str)}')
  if cfg.scan_layers:
    layer_cls = _scan_body(layer_cls)
  if cfg.remat_policy != 'none':
    # Unrolled, the layer index stays a Python int for the hook (self, x, *args, context, hook, layer).
    static = (len(args) + 4,) if hook is not None and not cfg.scan_layers else ()
    layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers,
                         static_argnums=static)
  if cfg.scan_layers:
    in_axes = (nn.broadcast,) * len(args)
    if hook is not None:
      args = args + (hook_context, hook, jnp.arange(num_layers, dtype=jnp.int32))
      in_axes = in_axes + (nn.broadcast, 0, 0)
    scanned = nn.scan(layer_cls, variable_axes={'params': 0, 'cache': 0}, split_rngs={'params': True, 'dropout': True},
                      in_axes=in_axes, length=num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = scanned(cfg, name='layers', **layer_kwargs)(x, *args)
    return x
  for i in range(num_layers):
    layer_args = args
    if hook is not None:
      layer_args = args + (hook_context, jax.tree.map(lambda a, i=i: a[i], hook), i)
    x = layer_cls(cfg, name=f'layers_{i}', **layer_kwargs)(x, *layer_args)
  return x
