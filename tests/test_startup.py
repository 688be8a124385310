"""The fixed cost of a CLI call: the persistent compilation cache (where it lives, how to move or disable it, a
repeated call compiling nothing, an unusable directory) and a start-up without TensorFlow for a run that reads no
task (one real process, `slow`: infer on text with the tiny fixture model loads neither TensorFlow nor seqio)."""
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


@pytest.mark.slow
def test_infer_on_text_loads_no_tensorflow(tiny_files, fixtures_dir, tmp_path):
  """A real process (this one has TensorFlow loaded), its cache moved by the environment variable."""
  script = ('import json, sys\nfrom jaxprompt.cli.main import main\ncode = main(sys.argv[1:])\n'
            "print(json.dumps({'code': code, 'loaded': [m for m in ('tensorflow', 'seqio') if m in sys.modules]}))")
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='3', JAXPROMPT_COMPILATION_CACHE=str(tmp_path / 'xla'))
  proc = subprocess.run([sys.executable, '-c', script, *_tiny_infer(tiny_files, fixtures_dir, tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  *records, status = proc.stdout.splitlines()
  assert json.loads(status) == {'code': 0, 'loaded': []}, proc.stderr
  assert len(records) == 2 and all(json.loads(r)['score'] <= 0 for r in records)
  assert any(p.name.startswith('jit_') for p in (tmp_path / 'xla').iterdir())


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
