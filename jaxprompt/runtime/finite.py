"""Whether a tree holds only finite numbers: the train step's guard (under jit) and the check before a checkpoint
or a final file is written (eagerly, on device or host arrays). Integer leaves (step counts, rng keys) are
always finite."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxprompt.parallel import host


def _leaf_flags(tree: Any) -> list[tuple[str, jax.Array]]:
  """(leaf path 'trainable/prompt', scalar bool: no NaN / inf) for each floating leaf of `tree`."""
  return [(jax.tree_util.keystr(path, simple=True, separator='/'), jnp.isfinite(x).all())
          for path, x in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(x.dtype if hasattr(x, 'dtype') else jnp.result_type(x), jnp.inexact)]


def all_finite(tree: Any) -> jax.Array:
  """True when no floating leaf of `tree` holds NaN / inf: a scalar bool, traced under jit."""
  flags = [ok for _, ok in _leaf_flags(tree)]
  return jnp.stack(flags).all() if flags else jnp.asarray(True)


def non_finite_leaves(tree: Any) -> list[str]:
  """The paths of the leaves of `tree` holding NaN / inf, in tree order; one host copy of one bool per leaf (each
  where its leaf lives: leaves may sit on different devices). Every process calls it alike (a leaf sharded across
  processes is reduced collectively)."""
  return [path for path, ok in _leaf_flags(tree) if not host.host_value(ok)]
