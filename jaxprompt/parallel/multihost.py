"""Multi-host runs (TPU pod slices): starting `jax.distributed`, who writes what, and each host's rows.

On a pod every host runs the same program; together they form one mesh. Each host reads only its shard of
the data (`shard_info()` for seqio), feeds its rows of the global batch (`process_rows`, then
`ShardedSteps.shard_batch`), and only process 0 writes logs and numpy prompts (`is_primary()`); orbax
checkpoints are written collectively by every process.

`maybe_initialize_distributed()` must run before anything touches a JAX device. It initializes when:
  * explicit `coordinator_address`, `num_processes`, `process_id` are given (tests, custom launchers), or the
    same come from the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`);
  * the environment is a known cluster: a Cloud TPU VM (TPU chips visible), several TPU workers
    (`TPU_WORKER_HOSTNAMES`), a multislice job (`MEGASCALE_COORDINATOR_ADDRESS`), Slurm or Open MPI with
    more than one task; then JAX detects the coordinator and process ids itself;
  * `JAXPROMPT_DISTRIBUTED=1` (force auto-detection); `JAXPROMPT_DISTRIBUTED=0` never initializes.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxprompt.errors import ConfigError, DataError

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
ENV_SWITCH = 'JAXPROMPT_DISTRIBUTED'


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
  """How to call `jax.distributed.initialize`: explicit values, or None for JAX's own cluster detection."""
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int(value: Any, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ConfigError(f'{name} must be an integer, got {value!r}') from None


def _explicit(coordinator_address: str | None, num_processes: Any, process_id: Any,
              source: str) -> DistributedPlan | None:
  """Checks a complete explicit triple; None when it describes a single process."""
  names = {'coordinator_address': coordinator_address, 'num_processes': num_processes, 'process_id': process_id}
  missing = [k for k, v in names.items() if v is None or v == '']
  if missing:
    raise ConfigError(f'multi-host setup from {source} is incomplete: {", ".join(missing)} not set '
                      '(give coordinator_address, num_processes and process_id together)')
  count, index = _int(num_processes, f'{source} num_processes'), _int(process_id, f'{source} process_id')
  if count < 1 or not 0 <= index < count:
    raise ConfigError(f'{source}: process_id={index} must be in [0, num_processes={count})')
  if ':' not in str(coordinator_address):
    raise ConfigError(f'{source}: coordinator_address {coordinator_address!r} must be host:port')
  if count == 1:
    return None
  return DistributedPlan(source, str(coordinator_address), count, index)


def on_cloud_tpu_vm() -> bool:
  """TPU chips are visible (v2/v3: /dev/accel*, v4+: /dev/vfio/N) and libtpu is installed."""
  chips = glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')
  return bool(chips) and importlib.util.find_spec('libtpu') is not None


def _count(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, '1'))
  except ValueError:
    return 1


def detect(env: Mapping[str, str] | None = None, *, coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None,
           tpu_vm: bool | None = None) -> DistributedPlan | None:
  """Decides whether (and how) to initialize `jax.distributed`; pure apart from the TPU probe."""
  env = os.environ if env is None else env
  if any(v is not None for v in (coordinator_address, num_processes, process_id)):
    return _explicit(coordinator_address, num_processes, process_id, 'arguments')
  switch = env.get(ENV_SWITCH, '').strip().lower()
  if switch in ('0', 'false', 'no', 'off'):
    return None
  if switch and switch not in ('1', 'true', 'yes', 'on', 'auto'):
    raise ConfigError(f'{ENV_SWITCH}={env[ENV_SWITCH]!r}: expected 1 (initialize), 0 (never) or auto')
  if env.get(ENV_NUM_PROCESSES) or env.get(ENV_PROCESS_ID):
    return _explicit(env.get(ENV_COORDINATOR), env.get(ENV_NUM_PROCESSES), env.get(ENV_PROCESS_ID),
                     f'environment ({ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})')
  if switch in ('1', 'true', 'yes', 'on'):
    return DistributedPlan(f'{ENV_SWITCH}={env[ENV_SWITCH]}')
  if env.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return DistributedPlan('TPU multislice (MEGASCALE_COORDINATOR_ADDRESS)')
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]) > 1:
    return DistributedPlan('TPU workers (TPU_WORKER_HOSTNAMES)')
  if env.get('SLURM_JOB_ID') and _count(env, 'SLURM_NTASKS') > 1:
    return DistributedPlan('Slurm (SLURM_NTASKS)')
  if _count(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return DistributedPlan('Open MPI (OMPI_COMM_WORLD_SIZE)')
  if on_cloud_tpu_vm() if tpu_vm is None else tpu_vm:
    # JAX reads the worker list from the TPU metadata; a single-host slice becomes a 1-process cluster.
    return DistributedPlan('Cloud TPU VM')
  return None


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, *, initialization_timeout: int = 300,
                                 heartbeat_timeout_seconds: int = 100, shutdown_timeout_seconds: int = 300,
                                 env: Mapping[str, str] | None = None) -> bool:
  """Initializes `jax.distributed` when the arguments or environment say multi-host (see module doc).

  Returns True when JAX runs distributed (initialized now or before), False for a single process. Call it
  first thing: after any JAX device use it fails with a ConfigError saying so.
  """
  if jax.distributed.is_initialized():
    return True
  plan = detect(env, coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if plan is None:
    return False
  try:
    jax.distributed.initialize(
        plan.coordinator_address, plan.num_processes, plan.process_id, initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds, shutdown_timeout_seconds=shutdown_timeout_seconds)
  except RuntimeError as e:
    raise ConfigError(f'cannot initialize jax.distributed ({plan.reason}): {e}. Call '
                      'maybe_initialize_distributed() before any JAX computation or jax.devices()') from e
  return True


def is_primary() -> bool:
  """True on the process that writes logs, summaries and numpy prompts (process 0)."""
  return jax.process_index() == 0


def shard_info():
  """`seqio.ShardInfo` of this process: each host reads a disjoint, interleaved shard of the data."""
  import seqio  # pylint: disable=g-import-not-at-top  (TF import only when data is actually read)
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def process_rows(sharding: jax.sharding.Sharding, global_batch_size: int) -> slice:
  """The rows of a [global_batch_size, ...] batch that this process's devices hold under `sharding`.

  Read from the sharding, so it holds for any device order (process ids need not match row order).
  """
  try:
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  except ValueError as e:
    raise DataError(f'a global batch of {global_batch_size} rows does not split over {sharding}: {e}') from e
  starts, stops = set(), set()
  for index in index_map.values():
    rows = index[0]
    starts.add(rows.start or 0)
    stops.add(global_batch_size if rows.stop is None else rows.stop)
  lo, hi = min(starts), max(stops)
  covered = set()
  for index in index_map.values():
    covered.update(range(*index[0].indices(global_batch_size)))
  if covered != set(range(lo, hi)):
    raise ConfigError(f'this process holds non-contiguous rows of the batch under {sharding}; build the mesh '
                      'with partitioning.create_mesh so each host owns one block of the data axis')
  return slice(lo, hi)


def host_local_batch(global_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  """This process's rows of a batch every process holds in full (e.g. a fixed eval batch)."""
  sizes = {k: np.shape(v)[0] for k, v in global_batch.items()}
  if len(set(sizes.values())) != 1:
    raise DataError(f'batch features have different numbers of rows: {sizes}')
  rows = process_rows(sharding, next(iter(sizes.values())))
  return {k: np.asarray(v)[rows] for k, v in global_batch.items()}


def sync(name: str) -> None:
  """Barrier across processes (no-op for one process), e.g. before process 0 reads what others wrote."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
