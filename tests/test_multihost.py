"""Multi-host training on CPU: 2 processes x 4 devices must match 1 process x 8 devices; plus the launch logic."""
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxprompt.errors import ConfigError, DataError
from jaxprompt.training import multihost
from tests.helpers import REPO

SCRIPT = REPO / 'tests' / 'scripts' / 'multihost_train.py'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(num_devices: int, args: list[str], log: pathlib.Path) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
             PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  for name in (multihost.ENV_SWITCH, multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID):
    env.pop(name, None)
  return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=log.open('w'),
                          stderr=subprocess.STDOUT)


def _wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, pathlib.Path], timeout: float) -> None:
  """Waits for every child; on a failure or timeout kills the rest and fails with all their logs."""
  failed = []
  for name, proc in procs.items():
    try:
      if proc.wait(timeout=timeout) != 0:
        failed.append(f'{name} exited with {proc.returncode}')
    except subprocess.TimeoutExpired:
      failed.append(f'{name} timed out after {timeout}s')
    if failed:
      break
  if failed:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    text = '\n'.join(f'===== {n} =====\n{logs[n].read_text()[-5000:]}' for n in procs)
    pytest.fail(f'{"; ".join(failed)}\n{text}')


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one_with_eight_devices(fixtures_dir, tmp_path):
  ckpt = str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0')
  coordinator = f'127.0.0.1:{_free_port()}'
  logs = {n: tmp_path / f'{n}.log' for n in ('single', 'process0', 'process1')}
  multi_out, single_out = tmp_path / 'multi.npz', tmp_path / 'single.npz'
  # All three at once: the 2-process pair and the 8-device reference are independent.
  procs = {'single': _start(8, [ckpt, str(tmp_path / 'single_dir'), str(single_out)], logs['single'])}
  for i in range(2):
    procs[f'process{i}'] = _start(4, [ckpt, str(tmp_path / 'multi_dir'), str(multi_out), coordinator, '2', str(i)],
                                  logs[f'process{i}'])
  _wait_all(procs, logs, timeout=150)

  single = np.load(single_out)
  p0, p1 = np.load(multi_out), np.load(f'{multi_out}.1.npz')
  assert 'local devices [0, 1, 2, 3]' in logs['process0'].read_text()
  assert list(p0['rows']) == [0, 4] and list(p1['rows']) == [4, 8]  # each host fed only its half
  assert list(single['rows']) == [0, 8]
  # Both processes see the same replicated prompt and losses.
  np.testing.assert_array_equal(p0['prompt'], p1['prompt'])
  np.testing.assert_array_equal(p0['losses'], p1['losses'])
  # ... which match one process on 8 devices (reductions run in another order: allclose, not equal).
  np.testing.assert_allclose(p0['losses'], single['losses'], rtol=1e-5)
  np.testing.assert_allclose(p0['prompt'], single['prompt'], rtol=1e-5, atol=1e-6)
  assert not np.allclose(p0['prompt'], p0['saved_prompt'])  # training moved the prompt after the save
  # Orbax wrote one checkpoint from both processes; process 0 alone wrote the numpy prompt.
  step_dir = tmp_path / 'multi_dir' / 'checkpoints' / '2'
  assert (step_dir / 'commit_success.txt').exists() or (step_dir / '_CHECKPOINT_METADATA').exists()
  numpy_dir = tmp_path / 'multi_dir' / 'numpy_checkpoints' / 'checkpoint_2'
  assert sorted(p.name for p in numpy_dir.iterdir()) == ['prompt.npy']
  np.testing.assert_array_equal(np.load(numpy_dir / 'prompt.npy'), p0['saved_prompt'])


# ------------------------------------------------------------------------------ launch decision (pure)


def test_detect_single_process_by_default():
  assert multihost.detect({}, tpu_vm=False) is None
  assert multihost.detect({'TPU_WORKER_HOSTNAMES': 'one-host'}, tpu_vm=False) is None
  assert multihost.detect({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, tpu_vm=False) is None
  assert multihost.detect({multihost.ENV_SWITCH: '0'}, tpu_vm=True) is None


def test_detect_explicit_arguments_and_environment():
  plan = multihost.detect({}, coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3, tpu_vm=False)
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ('10.0.0.1:1234', 4, 3)
  env = {multihost.ENV_COORDINATOR: '10.0.0.1:99', multihost.ENV_NUM_PROCESSES: '2',
         multihost.ENV_PROCESS_ID: '1'}
  plan = multihost.detect(env, tpu_vm=False)
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ('10.0.0.1:99', 2, 1)
  # One process is no cluster.
  assert multihost.detect({}, coordinator_address='h:1', num_processes=1, process_id=0) is None


@pytest.mark.parametrize('env, reason', [
    ({'TPU_WORKER_HOSTNAMES': 'w-0,w-1,w-2,w-3'}, 'TPU_WORKER_HOSTNAMES'),
    ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2'}, 'MEGASCALE'),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, 'Slurm'),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 'Open MPI'),
    ({multihost.ENV_SWITCH: '1'}, multihost.ENV_SWITCH),
    ({}, 'Cloud TPU VM'),
])
def test_detect_clusters_use_jax_auto_detection(env, reason):
  plan = multihost.detect(env, tpu_vm=not env)
  assert reason in plan.reason
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == (None, None, None)


@pytest.mark.parametrize('kwargs, env, message', [
    (dict(coordinator_address='h:1', num_processes=2), {}, 'process_id not set'),
    (dict(num_processes=2, process_id=0), {}, 'coordinator_address not set'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), {}, 'process_id=2 must be in [0, num_processes=2)'),
    (dict(coordinator_address='h:1', num_processes='two', process_id=0), {}, "num_processes must be an integer, got 'two'"),
    (dict(coordinator_address='host', num_processes=2, process_id=0), {}, "'host' must be host:port"),
    ({}, {multihost.ENV_NUM_PROCESSES: '2', multihost.ENV_PROCESS_ID: '0'}, 'JAX_COORDINATOR_ADDRESS'),
    ({}, {multihost.ENV_SWITCH: 'maybe'}, "JAXPROMPT_DISTRIBUTED='maybe'"),
])
def test_detect_rejects_bad_settings_by_name(kwargs, env, message):
  with pytest.raises(ConfigError) as e:
    multihost.detect(env, tpu_vm=False, **kwargs)
  assert message in str(e.value)


def test_initialize_after_jax_started_names_the_fix():
  jax.devices()  # the backend is up: jax.distributed can no longer start (fails before any connection)
  assert not multihost.maybe_initialize_distributed(env={})  # single process: nothing to do
  if jax.distributed.is_initialized():
    pytest.skip('jax.distributed already initialized in this process')
  with pytest.raises(ConfigError, match='before any JAX computation'):
    multihost.maybe_initialize_distributed('127.0.0.1:1', 2, 0, initialization_timeout=1)


def test_process_rows_single_process():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  assert multihost.process_rows(sharding, 6) == slice(0, 6)
  batch = {'a': np.arange(6), 'b': np.ones((6, 2))}
  assert multihost.host_local_batch(batch, sharding)['b'].shape == (6, 2)
  with pytest.raises(DataError, match="different numbers of rows: {'a': 6, 'b': 5}"):
    multihost.host_local_batch({'a': np.arange(6), 'b': np.ones((5, 2))}, sharding)
  assert multihost.is_primary()
