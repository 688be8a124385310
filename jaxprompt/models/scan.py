"""Converting parameter trees between per-layer (`layers_N`, T5X checkpoints) and scanned (`layers`) layouts."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_LAYER = re.compile(r'^layers_(\d+)$')


def stack_layers(params: dict) -> dict:
  """Stacks each stack's `layers_0..layers_{n-1}` subtrees into one `layers` subtree with a leading axis.

  Works on arrays and on ShapeDtypeStructs (for abstract shapes). Other entries pass through unchanged.
  """
  out = {}
  for name, sub in params.items():
    if not isinstance(sub, dict):
      out[name] = sub
      continue
    indices = sorted(int(m.group(1)) for k in sub if (m := _LAYER.match(k)))
    if indices:
      if indices != list(range(len(indices))):
        raise ValueError(f'{name}: layer indices {indices} are not contiguous from 0')
      layers = [sub[f'layers_{i}'] for i in indices]
      out[name] = {k: v for k, v in sub.items() if not _LAYER.match(k)}
      out[name]['layers'] = jax.tree.map(_stack, *layers)
    else:
      out[name] = stack_layers(sub)
  return out


def _stack(*leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype)
  return jnp.stack(leaves)


def unstack_layers(params: dict) -> dict:
  """Inverse of `stack_layers`: splits every `layers` subtree along its leading axis into `layers_N`."""
  out = {}
  for name, sub in params.items():
    if not isinstance(sub, dict):
      out[name] = sub
    elif 'layers' in sub:
      out[name] = {k: v for k, v in sub.items() if k != 'layers'}
      n = jax.tree.leaves(sub['layers'])[0].shape[0]
      for i in range(n):
        out[name][f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], sub['layers'])
    else:
      out[name] = unstack_layers(sub)
  return out
