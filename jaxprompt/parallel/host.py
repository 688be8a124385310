"""Host copies of device arrays, and each process's rows of a global batch (single- and multi-host alike)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def host_value(x: Any) -> np.ndarray:
  """The whole value of `x` as numpy on this host: the one way to copy device arrays to the host.

  A replicated array spanning several processes is read from a local shard; an array sharded across
  processes is gathered (a collective: every process must call this for it).
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def split_rows(array: np.ndarray, parts: int, index: int) -> np.ndarray:
  """Rows [index * n/parts, (index+1) * n/parts) of a global batch: this process's share."""
  rows = array.shape[0] // parts
  return array[index * rows:(index + 1) * rows]


def local_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (every process holds the whole batch, e.g. in eval)."""
  return {k: split_rows(np.asarray(v), jax.process_count(), jax.process_index()) for k, v in batch.items()}


def global_max(values: Mapping[str, int]) -> dict[str, int]:
  """Each value's maximum over all processes (a collective when there are several: every process calls it with
  the same keys); single-process: `values` unchanged."""
  if jax.process_count() == 1:
    return dict(values)
  keys = sorted(values)
  local = np.asarray([int(values[k]) for k in keys], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, keys]
  return {k: int(v) for k, v in zip(keys, gathered.max(axis=0))}
