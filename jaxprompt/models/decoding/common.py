"""What both decoders share: the `DecodingState` given to `tokens_to_logits`, the score of masked candidates
(`NEG_INF`), the loop-carry cache type fix-up and the argument checks."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError
from jaxprompt.models.beam_utils import leaf_name

PyTree = Any
# t5x's "effective -inf" for masked candidates and empty beam slots. A float64 numpy scalar on purpose: jax
# canonicalises it to a (non-weak) float32, exactly as in t5x, which fixes the dtype promotion of the scores.
NEG_INF = np.array(-1.0e7)


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees. cur_index: [batch*beams] (sampling) or scalar (beam search);
  sequences: [batch*beams, length]; cur_token: [batch*beams, 1]; cache: the model's cache pytree."""
  cur_index: jax.Array
  sequences: jax.Array
  cur_token: jax.Array
  cache: PyTree


def match_frozen(new_cache: PyTree, old_cache: PyTree) -> PyTree:
  """Gives the returned cache the (Frozen)Dict-ness of the carried one, so the loop carry type is stable."""
  if isinstance(old_cache, flax.core.FrozenDict) and not isinstance(new_cache, flax.core.FrozenDict):
    return flax.core.freeze(new_cache)
  if isinstance(new_cache, flax.core.FrozenDict) and not isinstance(old_cache, flax.core.FrozenDict):
    return flax.core.unfreeze(new_cache)
  return new_cache


def check_inputs(inputs, num_decodes):
  if inputs.ndim != 2:
    raise ConfigError(f'decoder inputs must be [batch, length], got shape {inputs.shape}')
  if not isinstance(num_decodes, (int, np.integer)) or num_decodes < 1:
    raise ConfigError(f'num_decodes must be a positive int, got {num_decodes!r}')


def check_prefilled(cache, initial_index, batch_size):
  if jnp.shape(initial_index) != (batch_size,):
    raise ConfigError(f'initial_index must be [batch={batch_size}], got shape {jnp.shape(initial_index)}')
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if leaf_name(path) == 'cache_index' and jnp.ndim(leaf) == 0:
      raise ConfigError(f'decoding from a prefilled cache (initial_index given) needs a per-example '
                        f'[batch] cache_index, but {jax.tree_util.keystr(path)} is a scalar')


def check_logits(logits, rows):
  if logits.ndim != 2 or logits.shape[0] != rows:
    raise ConfigError(f'tokens_to_logits must return logits [batch*beams={rows}, vocab], got {logits.shape}')
