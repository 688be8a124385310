"""Shared pytest fixtures: the t5x reference files, the tiny training task, the TPU scripts' environment.

`../shared/fixtures` holds reference files written by the real t5x code. A test that needs them skips only
when `../shared` itself is absent (a user's checkout); in CI it is always present.
"""
import atexit
import functools
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before any test imports tensorflow.


def _session_compilation_cache() -> None:
  """One fresh XLA compilation cache directory per test run, set before jax is imported.

  Tests that build the same tiny model again (a new jit of the same computation) and the CLI / multi-device
  subprocesses read each other's executables instead of compiling them again. The first process of a run (the
  only one, or pytest-xdist's controller) makes the directory and removes it at exit; its workers and every
  subprocess inherit it through the environment, so nothing outlives the run and CI stays clean-room.
  """
  path = os.environ.get('JAXPROMPT_TEST_COMPILATION_CACHE')
  if not path:
    path = tempfile.mkdtemp(prefix='jaxprompt-tests-xla-')
    os.environ['JAXPROMPT_TEST_COMPILATION_CACHE'] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # the tiny models compile in well under 1 s


def _session_tmpdir() -> None:
  """One temporary directory per test run for everything that calls `tempfile`, removed at exit.

  TFDS leaves an empty `tmp*tfds` directory behind each time it looks for a builder's info on GCS
  (`DatasetInfo.initialize_from_bucket` calls `tempfile.mkdtemp` and never removes it): ~120 a run. Made by the
  run's first process and inherited as `TMPDIR`, as the compilation cache is. pytest's own `tmp_path` directories
  stay where pytest keeps them (`PYTEST_DEBUG_TEMPROOT`: the machine's temporary directory), so a failed test's
  files are still there to read.
  """
  path = os.environ.get('JAXPROMPT_TEST_TMPDIR')
  if not path:
    os.environ.setdefault('PYTEST_DEBUG_TEMPROOT', tempfile.gettempdir())
    path = tempfile.mkdtemp(prefix='jaxprompt-tests-tmp-')
    os.environ['JAXPROMPT_TEST_TMPDIR'] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ['TMPDIR'] = path
  tempfile.tempdir = path


def _fast_compiles() -> None:
  """Cheaper XLA:CPU compiles for the test run: XLA:CPU's compile time, not the run time of the tiny models, is most
  of a test's cost. Each flag is added unless XLA_FLAGS already names it, and subprocesses that extend XLA_FLAGS
  keep them. Each changes how the machine code is made, not the HLO program (the t5x parity tests are bit-exact
  either way):
  * LLVM at -O0 (`--xla_backend_optimization_level=0`);
  * fusions emitted by XLA's older elemental emitters, not its MLIR fusion emitters
    (`--xla_cpu_use_fusion_emitters=false`): 44% less compile time over the model tests (jaxlib 0.10.2);
  * one LLVM module per program, not split for parallel codegen (`--xla_cpu_parallel_codegen_split_count=1`): the
    two workers already keep both cores busy; ~10% less compile time."""
  flags = os.environ.get('XLA_FLAGS', '')
  for name, value in (('xla_backend_optimization_level', '0'), ('xla_cpu_use_fusion_emitters', 'false'),
                      ('xla_cpu_parallel_codegen_split_count', '1')):
    if name not in flags:
      flags = f'{flags} --{name}={value}'.strip()
  os.environ['XLA_FLAGS'] = flags


_session_compilation_cache()
_session_tmpdir()
_fast_compiles()

import pytest  # pylint: disable=g-import-not-at-top
import seqio  # pylint: disable=g-import-not-at-top

from jaxprompt.commands import configs, groups  # pylint: disable=g-import-not-at-top
from jaxprompt.data import custom  # pylint: disable=g-import-not-at-top
from jaxprompt.methods.prompt_tuning import prompt_tuning  # pylint: disable=g-import-not-at-top
from jaxprompt.models.config import get_config  # pylint: disable=g-import-not-at-top
from tests.tiny_task import (
    EMPTY_TASK,
    GIN_TASK,
    LABELS,
    LENGTHS,
    PROMPT_LENGTH,
    PY_TASK,
    empty_train_split,
    make_tiny_task,
    write_tiny_gin,
)
from tests.tpu_helpers import ENV_SETTINGS, write_exe

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
FIXTURES = SHARED / 'fixtures'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  if not SHARED.exists():
    pytest.skip(f'{SHARED} is absent (reference fixtures ship beside the repo, not inside it)')
  assert FIXTURES.exists(), f'{FIXTURES} missing although {SHARED} exists'
  return FIXTURES


@pytest.fixture
def env(tmp_path):
  """Environment with the scripts' settings unset and a loud fake gcloud first on PATH."""
  fake_bin = tmp_path / 'fake_bin'
  fake_bin.mkdir()
  marker = tmp_path / 'REAL_CLOUD_CALLED'
  for tool in ('gcloud', 'gsutil'):
    write_exe(fake_bin / tool, f'echo "FAKE {tool} CALLED: $*" >&2\ntouch {marker}\nexit 97\n')
  result = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
  result['PATH'] = f'{fake_bin}{os.pathsep}{os.environ["PATH"]}'
  yield result
  assert not marker.exists(), 'a script called gcloud/gsutil although it must not'


# ------------------------------------------------------------------------------------ the tiny task


@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory):
  return make_tiny_task(tmp_path_factory.mktemp('tiny_task'))


@pytest.fixture(scope='session')
def tiny_bert(tmp_path_factory):
  """A tiny random BERT and its WordPiece tokenizer as one Hugging Face folder (tests/encoder_tiny.py)."""
  from tests.encoder_tiny import tiny_bert_folder  # pylint: disable=g-import-not-at-top
  return tiny_bert_folder(tmp_path_factory.mktemp('tiny_bert'))


@pytest.fixture(scope='session')
def tiny_causal(tmp_path_factory):
  """A tiny random Llama-style causal LM and its tokenizer as one Hugging Face folder (tests/causal_tiny.py)."""
  from tests.causal_tiny import tiny_causal_folder  # pylint: disable=g-import-not-at-top
  return tiny_causal_folder(tmp_path_factory.mktemp('tiny_causal'))


@pytest.fixture
def clean_gin():
  """Clears gin's bindings after the test (in-process CLI runs leave theirs behind)."""
  yield
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()


@pytest.fixture
def clean_gin_and_demo_tasks(clean_gin):  # pylint: disable=redefined-outer-name,unused-argument
  """Pretraining and the demo of another family register the demo tasks with that model's tokenizer: after the
  test they read with the shipped T5 vocabulary again (and gin is cleared)."""
  yield
  if 'jaxprompt.demo.tasks' in sys.modules:
    sys.modules['jaxprompt.demo.tasks'].register_demo_tasks()


@pytest.fixture(scope='module')
def tiny_gin(tiny_files, fixtures_dir, tmp_path_factory):
  """A gin file registering the tiny TSV task on the fixture model, as a user would (after models/ and runs/)."""
  checkpoint = fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'
  return write_tiny_gin(tmp_path_factory.mktemp('gin') / 'tiny_task.gin', tiny_files, checkpoint, GIN_TASK)


@pytest.fixture(scope='module')
def tiny_task(tiny_files):
  return custom.register_file_task(PY_TASK, train=str(tiny_files['train']), validation=str(tiny_files['validation']),
                                   label_set=LABELS, vocabulary=configs.vocabulary(str(tiny_files['vocab']), 0))


@pytest.fixture(scope='module')
def train_kwargs(tiny_task, fixtures_dir):
  """`jaxprompt.train`'s groups for the tiny task on the fixture model: 6 steps, eval and checkpoint every 3
  (`tests.helpers.regroup` changes fields of them)."""
  return dict(model=groups.ModelSource(get_config('t5x_tiny'), str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0')),
              data=groups.DataConfig(tiny_task.name, LENGTHS, batch_size=4), schedule=groups.Schedule(
                  train_steps=6, eval_period=3, checkpoint_period=3, log_period=1), evaluation=groups.EvalConfig(),
              checkpoints=groups.CheckpointConfig(), method=functools.partial(prompt_tuning,
                                                                              length=PROMPT_LENGTH), progress_bar=False)


@pytest.fixture(scope='module')
def empty_task(tiny_files):
  if EMPTY_TASK not in seqio.TaskRegistry.names():
    vocab = configs.vocabulary(str(tiny_files['vocab']), 0)
    seqio.TaskRegistry.add(EMPTY_TASK, source=seqio.FunctionDataSource(empty_train_split,
                                                                       splits=['train', 'validation']),
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
                           output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})
  return EMPTY_TASK


# The longest files by `--durations` (tests/README.md), longest first. pytest-xdist's `--dist loadfile` hands files
# to the two workers in collection order, so a long file collected last keeps one worker busy after the other has
# run out of work; handing them out first (longest processing time first) evens the two workers' ends.
LONGEST_FILES = ('test_doc_commands.py', 'test_sharded.py', 'test_demo.py', 'test_methods_workflow.py',
                 'test_demo_causal.py', 'test_train_loop.py', 'test_cli.py', 'test_causal_methods.py', 'test_style.py',
                 'test_bench_encoder_quality.py', 'test_multihost.py')


def pytest_collection_modifyitems(items: list) -> None:
  """Collects `LONGEST_FILES` first, in that order; every other file, and the order inside each file, as before."""
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
