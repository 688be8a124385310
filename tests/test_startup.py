"""The fixed cost of a CLI call: the persistent compilation cache (where it lives, how to move or disable it, a
repeated call compiling nothing, an unusable directory) and a start-up without TensorFlow (real processes, `slow`:
infer on text with the tiny fixture model, and eval of the demo task and of a `--task` file, load neither
TensorFlow nor seqio)."""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from jaxprompt.cli import compilation_cache
from jaxprompt.cli.main import main as cli_main
from jaxprompt.data import causal, sentencepiece_vocab, vocab
from jaxprompt.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]
MIN_TIME = 'jax_persistent_cache_min_compile_time_secs'
CACHE_EVENTS = ('/jax/compilation_cache/cache_hits', '/jax/compilation_cache/cache_misses')

pytestmark = pytest.mark.usefixtures('clean_gin')


def _config(**values) -> types.SimpleNamespace:
  """JAX's cache options at their defaults, with `values` changed (what `choose` reads)."""
  return types.SimpleNamespace(**{**compilation_cache._JAX_DEFAULTS, **values})  # pylint: disable=protected-access


@pytest.fixture
def no_cache_env(monkeypatch, tmp_path):
  """Neither JAX's nor jaxprompt's cache variable set (the suite sets JAX's, see conftest.py); XDG in tmp."""
  for name in ('JAX_COMPILATION_CACHE_DIR', compilation_cache.ENV, MIN_TIME.upper()):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  return tmp_path / 'xdg' / 'jaxprompt' / 'xla'


def test_where_the_cache_lives(no_cache_env, monkeypatch, tmp_path):
  choose = compilation_cache.choose
  assert choose(None, _config()) == str(no_cache_env)  # the user cache dir by default
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert choose(None, _config()) == str(tmp_path / 'home' / '.cache' / 'jaxprompt' / 'xla')
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / 'env'))  # the variable moves it ...
  assert choose(None, _config()) == str(tmp_path / 'env')
  monkeypatch.setenv(compilation_cache.ENV, 'None')  # ... or turns it off
  assert choose(None, _config()) == compilation_cache.OFF
  assert choose(None, _config(jax_compilation_cache_dir='/jax/own')) is None  # JAX's own setting wins over it,
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/jax/env')
  assert choose(None, _config()) is None
  assert choose(str(tmp_path / 'flag'), _config()) == str(tmp_path / 'flag')  # and the command line over all
  assert choose('none', _config()) == compilation_cache.OFF
  with pytest.raises(UsageError, match='--compilation_cache_dir needs a directory'):
    choose(' ', _config())


def test_settings_lower_jax_floors_unless_jax_sets_them(no_cache_env, monkeypatch):
  settings = compilation_cache.settings
  assert settings(compilation_cache.OFF, _config()) == {'jax_enable_compilation_cache': False}
  assert settings(None, _config(jax_compilation_cache_dir='/jax/own')) == {}
  assert settings(None, _config()) == {
      'jax_compilation_cache_dir': str(no_cache_env), MIN_TIME: 0.0, 'jax_persistent_cache_min_entry_size_bytes': -1
  }
  assert no_cache_env.is_dir() and (no_cache_env.stat().st_mode & 0o777) == 0o700  # trusted code: private
  assert MIN_TIME not in settings(None, _config(**{MIN_TIME: 0.5}))
  monkeypatch.setenv(MIN_TIME.upper(), '1')
  assert MIN_TIME not in settings(None, _config())


def _tiny_infer(tiny_files, fixtures_dir, tmp_path) -> list[str]:
  """`jaxprompt infer` on text with a random prompt on the fixture model (no task anywhere), small enough to
  compile fast (greedy decoding of 4 tokens)."""
  prompt, inputs = tmp_path / 'prompt.npy', tmp_path / 'inputs.txt'
  np.save(prompt, np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32))
  inputs.write_text('good movie plot\nawful film acting\n')
  return [
      'infer', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_infer.gin',
      f"--gin.VOCABULARY_PATH='{tiny_files['vocab']}'",
      f"--gin.T5X_TINY_CHECKPOINT='{fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.jaxprompt.decoding.method='sample'",
      '--gin.BATCH_SIZE=2', f'--prompt_file={prompt}', f'--input_file={inputs}'
  ]


@pytest.fixture
def jax_cache_unset():
  """JAX's own cache directory cleared in this process (the suite sets one per run), restored after the test."""
  saved = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', None)
  yield
  jax.config.update('jax_compilation_cache_dir', saved)
  jax_cache.reset_cache()  # JAX opens the run's cache again at its next compile


def _cache_events(argv) -> list[str]:
  """The persistent-cache events (hits, misses = writes) of one in-process `jaxprompt argv`."""
  events = []

  def listener(event, **kwargs):
    del kwargs
    if event in CACHE_EVENTS:
      events.append(event)

  jax.monitoring.register_event_listener(listener)
  try:
    assert cli_main(argv) == 0
  finally:
    jax.monitoring.unregister_event_listener(listener)
  return events


def test_the_cache_is_on_by_default_and_a_repeated_call_compiles_nothing(tiny_files, fixtures_dir, tmp_path,
                                                                         no_cache_env, jax_cache_unset, capsys):
  argv = _tiny_infer(tiny_files, fixtures_dir, tmp_path)
  first = _cache_events(argv)
  cached = sorted(p.name for p in no_cache_env.iterdir())
  assert CACHE_EVENTS[1] in first and any(name.startswith('jit_') for name in cached)  # written to the default dir
  records = capsys.readouterr().out
  assert set(_cache_events(argv)) == {CACHE_EVENTS[0]}  # every program read back, none compiled and written
  assert capsys.readouterr().out == records and sorted(p.name for p in no_cache_env.iterdir()) == cached


def _fresh_process(argvs, tmp_path) -> tuple[list[str], list[str]]:
  """(stdout lines, modules among tensorflow / seqio loaded) of `jaxprompt argv` for each of `argvs`, one after the
  other in one real process (this one has TensorFlow loaded), its cache moved by the environment variable."""
  script = ('import json, sys\nfrom jaxprompt.cli.main import main\n'
            'codes = [main(argv) for argv in json.loads(sys.argv[1])]\n'
            "print(json.dumps({'codes': codes, 'loaded': [m for m in ('tensorflow', 'seqio') if m in sys.modules]}))")
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='3', JAXPROMPT_COMPILATION_CACHE=str(tmp_path / 'xla'))
  proc = subprocess.run([sys.executable, '-c', script, json.dumps(argvs)], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  *lines, status = proc.stdout.splitlines()
  status = json.loads(status)
  assert status['codes'] == [0] * len(argvs), proc.stderr
  return lines, status['loaded']


def test_what_features_ask_of_a_sentencepiece_vocabulary_needs_no_seqio():
  """Its TensorFlow side comes from seqio's vocabulary of the same file, built on first use: the questions of every
  command's features (here the causal stream's: BOS?) must not reach it."""
  seqio_vocabularies = sentencepiece_vocab._seqio_vocabulary  # pylint: disable=protected-access
  seqio_vocabularies.cache_clear()
  tokens = causal.StreamTokens.of(vocab.get_default_vocabulary(), inputs_add_eos=True)
  assert tokens == causal.StreamTokens(None, 1) and seqio_vocabularies.cache_info().currsize == 0


@pytest.mark.slow
def test_infer_on_text_loads_no_tensorflow(tiny_files, fixtures_dir, tmp_path):
  records, loaded = _fresh_process([_tiny_infer(tiny_files, fixtures_dir, tmp_path)], tmp_path)
  assert loaded == []
  assert len(records) == 2 and all(json.loads(r)['score'] <= 0 for r in records)
  assert any(p.name.startswith('jit_') for p in (tmp_path / 'xla').iterdir())


@pytest.mark.slow
def test_eval_of_the_demo_task_and_a_file_task_loads_no_tensorflow(tiny_files, fixtures_dir, tmp_path):
  """Text tasks (`jaxprompt.data.text_tasks`) are read and scored without TensorFlow: the demo's held-out task on
  the demo model, and a `--task` TSV on the tiny fixture model."""
  demo_prompt = tmp_path / 'demo_prompt.npy'
  np.save(demo_prompt, np.random.default_rng(0).normal(size=(4, 128)).astype(np.float32))
  demo = [
      'eval', '--gin_file=models/demo.gin', '--gin_file=runs/prompt_eval.gin',
      "--gin.MIXTURE_OR_TASK_NAME='demo_heldout_topic'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
      '--gin.jaxprompt.DataConfig.max_examples=8', f'--prompt_file={demo_prompt}', f'--output={tmp_path / "demo.json"}'
  ]
  infer = _tiny_infer(tiny_files, fixtures_dir, tmp_path)
  task = [
      'eval', infer[1], '--gin_file=runs/prompt_eval.gin', *infer[3:5], '--gin.BATCH_SIZE=4',
      f'--task=name=jp_fresh,validation={tiny_files["validation"]},labels=negative|positive',
      "--gin.MIXTURE_OR_TASK_NAME='jp_fresh'", infer[-2], f'--output={tmp_path / "task.json"}'
  ]
  assert _fresh_process([demo, task], tmp_path)[1] == []
  results = [json.loads((tmp_path / name).read_text()) for name in ('demo.json', 'task.json')]
  assert [r['task'] for r in results] == ['demo_heldout_topic', 'jp_fresh']
  assert [r['metrics']['num_examples'] for r in results] == [8, 12]
  assert all(0 <= r['metrics']['accuracy'] <= 100 for r in results)


def test_an_unusable_cache_dir_warns_once_and_the_run_goes_on(tiny_files, fixtures_dir, tmp_path, capsys):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  argv = _tiny_infer(tiny_files, fixtures_dir, tmp_path)
  prompt = next(a.split('=', 1)[1] for a in argv if a.startswith('--prompt_file='))
  code = cli_main(['inspect', prompt, *argv[1:5], f'--compilation_cache_dir={blocker / "xla"}'])
  err = capsys.readouterr().err
  assert code == 0 and 'jaxprompt: error' not in err
  warnings = [line for line in err.splitlines() if 'compilation cache' in line]
  assert len(warnings) == 1 and f'compilation cache {blocker / "xla"} is not usable (NotADirectoryError' in warnings[0]
  assert (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache) == before  # restored
