"""Multi-host training on CPU: 2 processes x 4 devices must match 1 process x 8 devices; plus the launch logic."""
import json
import pathlib
import random
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxprompt.errors import ConfigError, DataError
from jaxprompt.parallel import multihost
from tests.helpers import REPO, assert_trained_close, subprocess_env

SCRIPT = REPO / 'tests' / 'scripts' / 'multihost_train.py'
FIXTURE_CKPT = ('t5x_tiny', 'classic_checkpoint_0')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(num_devices: int, args: list[str], log: pathlib.Path) -> subprocess.Popen:
  env = subprocess_env(num_devices)
  for name in (multihost.ENV_SWITCH, multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID):
    env.pop(name, None)
  return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=log.open('w'), stderr=subprocess.STDOUT)


def _start_pair(modes: dict, tmp_path: pathlib.Path, procs: dict, logs: dict) -> None:
  """Two processes x 4 devices joined through a localhost coordinator, running `modes` ({mode: args}) in order."""
  coordinator = f'127.0.0.1:{_free_port()}'
  for i in range(2):
    logs[f'process{i}'] = tmp_path / f'process{i}.log'
    procs[f'process{i}'] = _start(4, [json.dumps(modes), coordinator, '2', str(i)], logs[f'process{i}'])


def _wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, pathlib.Path], timeout: float) -> None:
  """Waits for every child; on a failure or timeout kills the rest and fails with all their logs."""
  deadline = time.monotonic() + timeout
  failed = []
  for name, proc in procs.items():
    try:
      if proc.wait(timeout=max(deadline - time.monotonic(), 1)) != 0:
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


_WORDS = 'good great fine nice bad awful poor dull movie film plot story acting music cast'.split()


def _tsv_task(root: pathlib.Path) -> dict:
  """64 distinct training rows, 8 validation rows and a tiny SentencePiece vocabulary (pad 0, eos 1)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  rows = set()
  while len(rows) < 72:
    rows.add(' '.join(rng.sample(_WORDS, 4)))
  rows = sorted(rows)
  rng.shuffle(rows)
  label = lambda r: 'positive' if any(w in r.split() for w in _WORDS[:4]) else 'negative'
  files = {'train': root / 'train.tsv', 'validation': root / 'validation.tsv'}
  files['train'].write_text(''.join(f'{r}\t{label(r)}\n' for r in rows[:64]))
  files['validation'].write_text(''.join(f'{r}\t{label(r)}\n' for r in rows[64:]))
  (root / 'text.txt').write_text('\n'.join(rows + ['positive negative'] * 20))
  spm.SentencePieceTrainer.train(input=str(root / 'text.txt'), model_prefix=str(root / 'tiny'), vocab_size=60,
                                 model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
                                 hard_vocab_limit=False)
  return {k: str(v) for k, v in dict(files, vocab=root / 'tiny.model').items()}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one_with_eight_devices_and_through_the_trainer(fixtures_dir, tmp_path):
  """One pair of processes runs both checks (one distributed start-up): the sharded steps against 1 process x 8
  devices, then `trainer.train`, each host reading its own half of the data, orbax checkpoints from both hosts."""
  ckpt = str(fixtures_dir.joinpath(*FIXTURE_CKPT))
  single = dict(checkpoint=ckpt, model_dir=str(tmp_path / 'single_dir'), out=str(tmp_path / 'single'))
  multi = dict(checkpoint=ckpt, model_dir=str(tmp_path / 'multi_dir'), out=str(tmp_path / 'multi'))
  trainer = dict(_tsv_task(tmp_path), checkpoint=ckpt, model_dir=str(tmp_path / 'model_dir'),
                 out=str(tmp_path / 'trainer'))
  # All three at once: the 2-process pair and the 8-device reference are independent.
  logs = {'single': tmp_path / 'single.log'}
  procs = {'single': _start(8, [json.dumps({'steps': single})], logs['single'])}
  _start_pair({'steps': multi, 'trainer': trainer}, tmp_path, procs, logs)
  _wait_all(procs, logs, timeout=200)
  _check_steps(tmp_path, logs)
  _check_trainer(tmp_path)


def _check_steps(tmp_path: pathlib.Path, logs: dict) -> None:
  one = np.load(tmp_path / 'single.0.npz')
  p0, p1 = np.load(tmp_path / 'multi.0.npz'), np.load(tmp_path / 'multi.1.npz')
  assert 'local devices [0, 1, 2, 3]' in logs['process0'].read_text()
  assert list(p0['rows']) == [0, 4] and list(p1['rows']) == [4, 8]  # each host fed only its half
  assert list(one['rows']) == [0, 8]
  # Both processes see the same replicated prompt and losses ...
  np.testing.assert_array_equal(p0['prompt'], p1['prompt'])
  np.testing.assert_array_equal(p0['losses'], p1['losses'])
  # ... which match one process on 8 devices (reductions run in another order: allclose, not equal).
  np.testing.assert_allclose(p0['losses'], one['losses'], rtol=1e-5)
  assert_trained_close(p0['prompt'], one['prompt'], one['start'], steps=4)
  assert not np.allclose(p0['prompt'], p0['saved_prompt'])  # training moved the prompt after the save
  # Orbax wrote one checkpoint from both processes; process 0 alone wrote the numpy prompt.
  step_dir = tmp_path / 'multi_dir' / 'checkpoints' / '2'
  assert (step_dir / 'commit_success.txt').exists() or (step_dir / '_CHECKPOINT_METADATA').exists()
  assert sorted(p.name for p in (step_dir / 'state').glob('ocdbt.process_*')) == ['ocdbt.process_0', 'ocdbt.process_1']
  numpy_dir = tmp_path / 'multi_dir' / 'numpy_checkpoints' / 'checkpoint_2'
  assert sorted(p.name for p in numpy_dir.iterdir()) == ['prompt.npy']
  np.testing.assert_array_equal(np.load(numpy_dir / 'prompt.npy'), p0['saved_prompt'])


def _check_trainer(tmp_path: pathlib.Path) -> None:
  p0, p1 = np.load(tmp_path / 'trainer.0.npz'), np.load(tmp_path / 'trainer.1.npz')
  assert int(p0['step']) == int(p1['step']) == 4
  np.testing.assert_array_equal(p0['prompt'], p1['prompt'])
  # seqio shards by process: disjoint halves that together are the whole training split.
  seen0, seen1 = set(p0['seen']), set(p1['seen'])
  assert len(seen0) == len(seen1) == 32 and not seen0 & seen1
  model_dir = tmp_path / 'model_dir'
  final = pathlib.Path(str(p0['prompt_file']))  # the exported prompt (written by process 0)
  assert final.parent == model_dir and str(p1['prompt_file']) == str(final)
  np.testing.assert_array_equal(np.load(final), p0['prompt'])
  for step in (2, 4):
    step_dir = model_dir / 'checkpoints' / str(step)
    assert sorted(p.name for p in (step_dir / 'state').glob('ocdbt.process_*')) == [
        'ocdbt.process_0', 'ocdbt.process_1'
    ]
  np.testing.assert_array_equal(np.load(model_dir / 'numpy_checkpoints' / 'checkpoint_4' / 'prompt.npy'), p0['prompt'])


# ------------------------------------------------------------------------------ launch decision (pure)


def test_detect_single_process_by_default():
  assert multihost.detect({}, tpu_vm=False) is None
  assert multihost.detect({'TPU_WORKER_HOSTNAMES': 'one-host'}, tpu_vm=False) is None
  assert multihost.detect({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, tpu_vm=False) is None
  assert multihost.detect({multihost.ENV_SWITCH: '0'}, tpu_vm=True) is None


def test_detect_explicit_arguments_and_environment():
  plan = multihost.detect({}, coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3, tpu_vm=False)
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ('10.0.0.1:1234', 4, 3)
  env = {multihost.ENV_COORDINATOR: '10.0.0.1:99', multihost.ENV_NUM_PROCESSES: '2', multihost.ENV_PROCESS_ID: '1'}
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
    (dict(coordinator_address='h:1', num_processes=2,
          process_id=2), {}, 'process_id=2 must be in [0, num_processes=2)'),
    (dict(coordinator_address='h:1', num_processes='two',
          process_id=0), {}, "num_processes must be an integer, got 'two'"),
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
