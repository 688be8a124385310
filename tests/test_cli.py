"""`jaxprompt {train,eval,infer,export}`: gin configs, the end-to-end workflow (a training run and a preempted one as
real processes, export / eval / infer of their prompts in process), preemption, and one clear error line for every
bad input.

Bad inputs are mostly checked through `jaxprompt.cli.main.main(argv)` in this process (the same code the console script
runs, without paying the ~7 s TensorFlow import per case); a few run as real subprocesses to show the exit
code and that no traceback reaches stderr. The task is the tiny TSV task of tests/test_trainer.py, registered
through gin (`jaxprompt.data.register_file_task`) exactly as a user would.
"""
import io
import json
import pathlib
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.cli import gin_config
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import configs
from jaxprompt.commands.train import FAULTS_ENV
from jaxprompt.models.config import CONFIGS
from tests.helpers import REPO, subprocess_env
from tests.tiny_task import EMPTY_TASK, GIN_TASK, LABELS

BASE_GIN = ['--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_tuning.gin']

pytestmark = pytest.mark.usefixtures('clean_gin')  # in-process runs leave gin bindings behind


def run_cli(args, stdin=None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'jaxprompt', *map(str, args)], cwd=REPO, env=subprocess_env(),
                        input=stdin, capture_output=True, text=True, timeout=timeout)


def error_line(stderr: str) -> str:
  """The single `jaxprompt: error:` line (asserting there is exactly one and no traceback)."""
  assert 'Traceback' not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.startswith('jaxprompt: error:')]
  assert len(lines) == 1, stderr
  return lines[0]


def main_error(capsys, argv) -> tuple[int, str]:
  """Runs `jaxprompt.cli.main.main` in this process; returns (exit code, its one error line)."""
  code = cli_main([str(a) for a in argv])
  return code, error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------ arguments and gin


def test_help_lists_the_important_macros(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli_main(['train', '--help'])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  for macro in ('MODEL_DIR', 'INITIAL_CHECKPOINT_PATH', 'MIXTURE_OR_TASK_NAME', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS',
                'BATCH_SIZE', 'PROMPT_LENGTH', 'LEARNING_RATE', '--gin_file', '--gin_search_paths'):
    assert macro in out


def test_console_script_and_python_m_run_the_same_main():
  import importlib  # pylint: disable=g-import-not-at-top
  import tomllib  # pylint: disable=g-import-not-at-top
  target = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['scripts']['jaxprompt']
  module, _, function = target.partition(':')
  assert getattr(importlib.import_module(module), function) is cli_main
  assert 'from jaxprompt.cli' in (REPO / 'jaxprompt' / '__main__.py').read_text()


def test_commands_are_loaded_by_name(capsys):
  """The table names every command's entry point; the demo parses its own flags."""
  from jaxprompt.cli import main as dispatch  # pylint: disable=g-import-not-at-top
  assert set(dispatch.COMMANDS) == {'train', 'eval', 'infer', 'export', 'inspect', 'demo'}
  with pytest.raises(SystemExit) as exit_info:
    cli_main(['demo', '--help'])
  assert exit_info.value.code == 0 and '--baseline_steps' in capsys.readouterr().out
  code, line = main_error(capsys, ['export', '--output', 'x.npy'])
  assert code == 2 and 'export needs --checkpoint' in line


def test_gin_configs_ship_inside_the_package():
  """`jaxprompt/gin_configs` is the repository folder (a symlink) and every file in it is package data."""
  import tomllib  # pylint: disable=g-import-not-at-top
  assert (REPO / 'jaxprompt' / 'gin_configs').resolve() == (REPO / 'gin_configs').resolve()
  patterns = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']['package-data']['jaxprompt']
  package = REPO / 'jaxprompt'
  shipped = {f for pattern in patterns for f in package.glob(pattern) if f.is_file()}
  configs = {f for f in (package / 'gin_configs').rglob('*') if f.is_file()}
  assert len(configs) > 30 and configs <= shipped


def _parse(files, bindings=()):
  gin_config.import_configurables()
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO / 'gin_configs'))
  gin.parse_config_files_and_bindings([str(REPO / 'gin_configs' / f) for f in files], list(bindings),
                                      finalize_config=False)


def test_every_model_gin_names_a_config_and_a_public_checkpoint():
  sizes = ['small', 'base', 'large', 'xl', 'xxl']
  expected = ({f't5_1_1_{s}' for s in sizes} | {f't5_1_1_lm100k_{s}' for s in sizes} | {f'mt5_{s}' for s in sizes} |
              {f't5_1_0_{s}' for s in ('small', 'base', 'large', '3b', '11b')} | {'t5x_tiny'})
  assert expected <= {m.stem for m in (REPO / 'gin_configs' / 'models').glob('*.gin')}
  for stem in sorted(expected):
    _parse([f'models/{stem}.gin'])
    name = gin.query_parameter('jaxprompt.model_config.name')
    assert name == stem and name in CONFIGS
    config = configs.model_config()  # pylint: disable=no-value-for-parameter
    large = re.search(r'_(xl|xxl|3b|11b)$', name) is not None
    if large:  # the layout of bench/MEMORY.md: bf16 weights, scan + full remat, 2-D sharding, model axis 2
      assert (config.param_dtype, config.scan_layers, config.remat_policy) == (jnp.bfloat16, True, 'full')
      assert gin.query_parameter('jaxprompt.prompt_logical_axis_rules.parameter_partitioning_dims') == 2
      assert gin.query_parameter('%MODEL_PARALLEL') == 2
    assert config == CONFIGS[name].replace(dtype=config.dtype, param_dtype=config.param_dtype, scan_layers=large,
                                           remat_policy='full' if large else 'none')
    path = gin.query_parameter('%INITIAL_CHECKPOINT_PATH')
    if name.startswith('t5_1_1_lm100k_'):
      assert path == f'gs://t5-data/pretrained_models/t5x/{name}/checkpoint_1100000'
    elif name != 't5x_tiny':
      assert re.fullmatch(
          r'gs://t5-data/pretrained_models/t5x/(t5_1_1_\w+|mt5_\w+|t5_(small|base|large|3B|11B))'
          r'/checkpoint_\d+', path), path


def test_prompt_tuning_gin_has_the_paper_hyperparameters():
  from jaxprompt.runtime import optim  # pylint: disable=g-import-not-at-top
  _parse(['models/t5_1_1_lm100k_base.gin', 'runs/prompt_tuning.gin'])
  macros = {m: gin.query_parameter(f'%{m}') for m in ('PROMPT_LENGTH', 'LEARNING_RATE', 'BATCH_SIZE', 'TRAIN_STEPS')}
  assert macros == {'PROMPT_LENGTH': 100, 'LEARNING_RATE': 0.3, 'BATCH_SIZE': 32, 'TRAIN_STEPS': 30000}
  assert gin.query_parameter('jaxprompt.adafactor.decay_rate') == 0.8
  assert gin.query_parameter('jaxprompt.adafactor.weight_decay_rate') == 1e-5
  assert gin.query_parameter('%PROMPT_INIT').selector == 'jaxprompt.methods.class_labels'
  optimizer = optim.make_optimizer()  # pylint: disable=no-value-for-parameter
  assert float(optimizer.learning_rate(0)) == pytest.approx(0.3) == float(optimizer.learning_rate(29999))
  for prompt_gin in ('random_uniform', 'sampled_vocab', 'class_labels', 'from_text', 'from_file'):
    _parse(['models/t5_1_1_lm100k_base.gin', 'runs/prompt_tuning.gin', f'prompts/{prompt_gin}.gin'])
    assert gin.query_parameter('%PROMPT_INIT').selector == f'jaxprompt.methods.{prompt_gin}'
  for run in ('prompt_eval', 'prompt_infer'):
    _parse(['models/t5_1_1_lm100k_base.gin', f'runs/{run}.gin'])


def tiny_gin_files(tiny_gin) -> dict:
  """The train / validation paths the tiny gin file registers its task from."""
  text = pathlib.Path(tiny_gin).read_text()
  return {k: re.search(rf"^  {k} = '([^']+)'", text, re.M).group(1) for k in ('train', 'validation')}


# ------------------------------------------------------------------------------------ bad inputs, in process


def test_bad_task_spec(capsys):
  code, line = main_error(capsys, ['eval', '--gin_file=models/t5x_tiny.gin', '--task', 'name=x,trian=a.tsv'])
  assert code == 2 and "unknown key 'trian'" in line
  code, line = main_error(capsys, ['eval', '--gin_file=models/t5_1_1_small.gin', '--task', 'name=x,train=/no/such.tsv'])
  assert code == 2 and '/no/such.tsv' in line


def test_missing_gin_file(capsys):
  code, line = main_error(capsys, ['train', '--gin_file=models/no_such_model.gin'])
  assert code == 2 and 'gin file models/no_such_model.gin not found; did you mean ' in line


def test_unknown_gin_bindings(capsys, tiny_gin):
  code, line = main_error(capsys, ['train', *BASE_GIN, f'--gin_file={tiny_gin}', '--gin.jaxprompt.train.no_such=1'])
  assert code == 2 and "doesn't have a parameter named 'no_such'" in line
  code, line = main_error(capsys, ['train', *BASE_GIN, '--gin.nosuch.thing=1'])
  assert code == 2 and "No configurable matching 'nosuch'" in line


def test_unset_macro_is_named(capsys, tiny_gin):
  code, line = main_error(capsys, ['train', *BASE_GIN, f'--gin_file={tiny_gin}'])  # no MODEL_DIR
  assert code == 2 and 'MODEL_DIR' in line and 'never set' in line


def test_missing_and_wrong_checkpoint_paths(capsys, tiny_gin, tmp_path):
  args = ['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
  code, line = main_error(capsys, args + [f"--gin.T5X_TINY_CHECKPOINT='{tmp_path / 'nowhere'}'"])
  assert code == 2 and f'{tmp_path / "nowhere"}: checkpoint path does not exist' in line
  (tmp_path / 'not_a_ckpt').mkdir()
  (tmp_path / 'not_a_ckpt' / 'notes.txt').write_text('hello')
  code, line = main_error(capsys, args + [f"--gin.T5X_TINY_CHECKPOINT='{tmp_path / 'not_a_ckpt'}'"])
  assert code == 2 and f'{tmp_path / "not_a_ckpt"}: not a T5X checkpoint' in line


def test_model_config_not_matching_the_checkpoint(capsys, tiny_gin, tmp_path):
  code, line = main_error(capsys, [
      'train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.jaxprompt.model_config.name='test_tiny'"
  ])
  assert code == 2 and 'classic_checkpoint_0' in line
  shape = r'\[[\d, ]+\]'
  assert re.search(rf"parameter '[\w/]+' has shape {shape} in the checkpoint but the model expects {shape}", line)


def test_model_dir_not_writable(capsys, tiny_gin, tmp_path):
  (tmp_path / 'file').write_text('x')
  code, line = main_error(
      capsys, ['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path / 'file' / 'run'}'"])
  assert code == 2 and f'MODEL_DIR {tmp_path / "file" / "run"} is not writable' in line


def test_empty_dataset_split(capsys, tiny_gin, empty_task, tmp_path):
  code, line = main_error(capsys, [
      'train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{empty_task}'", '--gin.PROMPT_INIT=@jaxprompt.methods.random_uniform()'
  ])
  assert code == 2 and f"task '{EMPTY_TASK}' split 'train' is empty" in line
  # Its default class-label initialisation already needs labels the task does not have:
  code, line = main_error(capsys, [
      'train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{empty_task}'"
  ])
  assert code == 2 and f"task '{EMPTY_TASK}' has no label set, so CLASS_LABELS cannot default to it" in line


@pytest.mark.parametrize('kind', ['shape', 'dtype', 'pickle', 'missing'])
def test_bad_prompt_files(capsys, tiny_gin, tmp_path, kind):
  path = tmp_path / f'{kind}.npy'
  if kind == 'shape':
    np.save(path, np.zeros((5, 16), np.float32))
  elif kind == 'dtype':
    np.save(path, np.zeros((5, 32), np.int64))
  elif kind == 'pickle':
    path.write_bytes(pickle.dumps({'prompt': np.zeros((5, 32), np.float32)}))
  code, line = main_error(capsys, [
      'eval', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_eval.gin', f'--gin_file={tiny_gin}',
      f'--prompt_file={path}'
  ])
  assert code == 2 and str(path) in line
  assert {
      'shape': 'has shape (5, 16) but the prompt shape is (5, 32)', 'dtype': 'has dtype int64',
      'pickle': 'not a .npy file', 'missing': 'does not exist'
  }[kind] in line


# ------------------------------------------------------------------------------------ the workflow, as processes


@pytest.fixture(scope='module')
def trained(tiny_gin, tmp_path_factory):
  """`jaxprompt train` on the fixture model: 6 steps, eval and checkpoint every 3."""
  model_dir = tmp_path_factory.mktemp('cli_run') / 'model'
  proc = run_cli(['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{model_dir}'"])
  assert proc.returncode == 0, proc.stderr
  return model_dir, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_train_writes_prompt_checkpoints_metrics_and_curves(trained):
  model_dir, summary, stderr = trained
  assert summary['step'] == 6 and not summary['preempted']
  # Plain log lines (not a tty), and the bytes a checkpoint holds, printed at the start.
  assert re.search(r'step 6/6 +loss/token [\d.]+ .* steps/s +[\d.]+ examples/step +encoder fill \d+% +ETA', stderr)
  assert re.search(
      r'PromptTuning: 160 trainable parameters \(640 bytes\); a checkpoint holds them and the '
      r'optimizer state: [\d,]+ bytes', stderr)
  prompt = np.load(summary['prompt_file'])
  assert prompt.shape == (5, 32) and prompt.dtype == np.float32
  assert summary['final_files'] == {'prompt.npy': summary['prompt_file']
                                   } == {'prompt.npy': str(model_dir / 'final_prompt.npy')}
  assert sorted(p.name for p in (model_dir / 'checkpoints').iterdir()) == ['3', '6']
  np.testing.assert_array_equal(np.load(model_dir / 'numpy_checkpoints' / 'checkpoint_6' / 'prompt.npy'), prompt)
  for name in ('training_curves.png', 'eval_metrics.json', 'train_metrics.jsonl', 'config.gin'):
    assert (model_dir / name).stat().st_size > 0, name
  assert list(model_dir.glob('events.out.tfevents.*'))
  assert f"name = '{GIN_TASK}'" in (model_dir / 'config.gin').read_text()


@pytest.mark.slow
def test_export_eval_and_infer_with_the_exported_prompt(trained, tiny_gin, tmp_path):
  model_dir, summary, _ = trained
  exported = tmp_path / 'exported.npy'
  # In process (the same `main` the console script runs; `trained` is the real process): export, eval, infer.
  assert cli_main(['export', '--checkpoint', str(model_dir), '--step', '3', '--output', str(exported)]) == 0
  np.testing.assert_array_equal(np.load(exported), np.load(model_dir / 'numpy_checkpoints/checkpoint_3/prompt.npy'))
  assert cli_main(['export', '--checkpoint', str(model_dir), '--output', str(exported)]) == 0
  np.testing.assert_array_equal(np.load(exported), np.load(summary['prompt_file']))

  metrics_file = tmp_path / 'metrics.json'
  assert cli_main([
      'eval', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_eval.gin', f'--gin_file={tiny_gin}',
      f'--prompt_file={exported}', f'--output={metrics_file}'
  ]) == 0
  metrics = json.loads(metrics_file.read_text())['metrics']
  # The same prompt on the same split: the numbers the trainer logged for its final evaluation.
  assert metrics['num_examples'] == 12
  assert metrics['accuracy'] == pytest.approx(summary['eval_metrics']['accuracy'])
  assert metrics['loss'] == pytest.approx(summary['eval_metrics']['loss'], rel=1e-5)

  # The same files registered from the command line (--task) instead of gin: the same numbers.
  files = tiny_gin_files(tiny_gin)
  spec = f"name=jp_cli_spec_task,train={files['train']},validation={files['validation']},labels=negative|positive"
  spec_metrics = tmp_path / 'spec_metrics.json'
  assert cli_main([
      'eval', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_eval.gin', f'--gin_file={tiny_gin}', '--task',
      spec, "--gin.MIXTURE_OR_TASK_NAME='jp_cli_spec_task'", f'--prompt_file={exported}', f'--output={spec_metrics}'
  ]) == 0
  spec_result = json.loads(spec_metrics.read_text())['metrics']
  assert spec_result['num_examples'] == 12 and spec_result['accuracy'] == pytest.approx(metrics['accuracy'])

  inputs = tmp_path / 'inputs.txt'
  inputs.write_text('good movie plot\n\nawful film acting\n')
  out = tmp_path / 'predictions.jsonl'
  assert cli_main([
      'infer', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_infer.gin', f'--gin_file={tiny_gin}',
      f'--prompt_file={exported}', f'--input_file={inputs}', f'--output={out}'
  ]) == 0
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['input'] for r in records] == ['good movie plot', 'awful film acting']
  # The inputs' task has a label set: ranked over it, as eval does, each score named for what it is.
  assert all(set(r) == {'input', 'prediction', 'prediction_by', 'log_likelihood', 'score'} for r in records)
  assert all(r['prediction'] in LABELS and r['log_likelihood'] == r['score'] <= 0 for r in records)


@pytest.mark.slow
def test_infer_reads_stdin_or_a_task_split(trained, tiny_gin, capsys, monkeypatch):
  """In process (the same `main`), to spare two more TensorFlow imports."""
  model_dir, _, _ = trained
  base = [
      'infer', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_infer.gin', f'--gin_file={tiny_gin}',
      f'--checkpoint={model_dir}'
  ]
  monkeypatch.setattr(sys, 'stdin', io.StringIO('good movie plot\nawful film acting\n'))
  assert cli_main(base + ['--gin.MIXTURE_OR_TASK_NAME=None']) == 0  # no task, no --input_file: stdin
  from_stdin = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r['input'] for r in from_stdin] == ['good movie plot', 'awful film acting']
  assert all(r['prediction_by'] == 'beam_search' and r['beam_score'] == r['score'] <= 0 for r in from_stdin)
  assert cli_main(base + ['--split=validation']) == 0
  from_task = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  validation = pathlib.Path(gin_task_file(tiny_gin, 'validation')).read_text().splitlines()
  assert [r['input'] for r in from_task] == [row.split('\t')[0] for row in validation]
  assert all(r['prediction'] in LABELS and r['log_likelihood'] == r['score'] <= 0 for r in from_task)
  assert cli_main(base + ['--split=validation', '--gin.jaxprompt.infer.rank_classification=False']) == 0
  decoded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(decoded) == len(from_task) and all('beam_score' in r for r in decoded)


def gin_task_file(gin_file: pathlib.Path, split: str) -> str:
  return re.search(rf"{split} = '([^']+)'", gin_file.read_text()).group(1)


def _read_lines(stream, lines: queue.Queue) -> None:
  for line in stream:
    lines.put(line)
  lines.put(None)


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resume_matches(trained, tiny_gin, tmp_path, capsys):
  model_dir, summary, _ = trained
  run_dir = tmp_path / 'preempted'
  args = ['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{run_dir}'"]
  slow = subprocess_env(**{FAULTS_ENV: json.dumps({'sleep_per_step': 1.0})})  # time to signal mid-run
  proc = subprocess.Popen([sys.executable, '-m', 'jaxprompt', *args], cwd=REPO, env=slow, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True).start()
  seen = []
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline:
    line = lines.get(timeout=240)
    if line is None:
      break
    seen.append(line)
    if re.search(r'step [12]/6', line):  # a step finished: training is under way, the guard is installed
      proc.send_signal(signal.SIGTERM)
      break
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, ''.join(seen)
  stopped = json.loads(out.strip().splitlines()[-1])
  assert stopped['preempted'] and 1 <= stopped['step'] < 6
  assert (run_dir / 'checkpoints' / str(stopped['step'])).is_dir()
  assert not (run_dir / 'final_prompt.npy').exists()

  assert cli_main(args) == 0  # the same command resumes and finishes (in process: the signal was the real one)
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['step'] == 6
  np.testing.assert_array_equal(np.load(run_dir / 'final_prompt.npy'), np.load(summary['prompt_file']))


@pytest.mark.slow
def test_nan_loss_stops_with_exit_code_1(capsys, tiny_gin, tmp_path, monkeypatch):
  monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_loss_at_step': 5}))
  code, line = main_error(
      capsys, ['train', *BASE_GIN, f'--gin_file={tiny_gin}', f"--gin.MODEL_DIR='{tmp_path}'", '--gin.EVAL_PERIOD=100'])
  assert code == 1
  assert 'non-finite loss at step 5' in line and f'the last good checkpoint, step 3, is kept in {tmp_path}' in line
  # Nothing is saved at or after the bad step; what was saved before stays.
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['3']
  assert sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir()) == ['checkpoint_3']
  assert not (tmp_path / 'final_prompt.npy').exists()


def test_missing_gin_file_in_a_real_process():
  proc = run_cli(['train', '--gin_file=runs/no_such_run.gin'], timeout=60)
  assert proc.returncode == 2
  assert 'gin file runs/no_such_run.gin not found; did you mean ' in error_line(proc.stderr)
  assert proc.stderr.count('\n') == 1  # nothing else: it fails before TensorFlow is even imported
