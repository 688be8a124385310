"""Reading a run directory: a run's config.gin records its `--task` specs, and `eval` / `infer` on a MODEL_DIR (or
a step dir, or a final file) with no gin file take the run's own configuration; infer's records name their
scores and rank over a task's labels with one prompt (`--prompt_file` / `--checkpoint`)."""
import json
import pathlib

import gin
import numpy as np
import pytest
import seqio

from jaxprompt.cli import gin_config, run_dir
from jaxprompt.cli.main import main as cli_main
from jaxprompt.data import custom, task_spec
from jaxprompt.models.config import get_config
from tests.test_cli import BASE_GIN, main_error
from tests.tiny_task import LABELS

pytestmark = pytest.mark.usefixtures('clean_gin')  # in-process runs leave gin bindings behind


def test_task_specs_are_recorded_with_absolute_paths_and_registered_again(tiny_files, monkeypatch):
  """What a run's config.gin holds for `--task` (paths made absolute) registers the same task when parsed back,
  from any working directory."""
  gin_config.import_configurables(('jaxprompt.data.task_spec',))
  gin.clear_config()
  monkeypatch.chdir(tiny_files['train'].parent)
  name = 'jp_recorded_spec_task'
  task_spec.bind_task_specs([
      f'name={name},train=train.tsv,validation=./validation.tsv,labels=negative|positive,'
      'vocab=tiny.model'
  ])
  task_spec.bind_task_specs([
      f'name={name},train={tiny_files["train"]},validation={tiny_files["validation"]},'
      f'labels=negative|positive,vocab={tiny_files["vocab"]}'
  ])  # the same spec: kept once
  recorded = gin.config_str()
  assert recorded.count(f'name={name}') == 1 and f'train={tiny_files["train"]}' in recorded
  assert f'validation={tiny_files["validation"]}' in recorded and f'vocab={tiny_files["vocab"]}' in recorded
  gin.clear_config()
  monkeypatch.chdir('/')
  gin.parse_config(recorded)
  custom.unregister_file_task(name)
  (task,) = task_spec.register_task_specs()  # pylint: disable=no-value-for-parameter  (gin supplies the specs)
  assert task.name == name and name in seqio.TaskRegistry.names()
  assert custom.get_file_task_label_set(name) == LABELS
  assert task_spec.absolute_spec(
      'name=x,train=gs://b/t.tsv|a.tsv') == f'name=x,train=gs://b/t.tsv|{pathlib.Path("/a.tsv")}'


def test_which_gin_files_a_command_reads(tmp_path):
  run = tmp_path / 'run'
  (run / 'checkpoints' / '6').mkdir(parents=True)
  (run / 'numpy_checkpoints' / 'checkpoint_6').mkdir(parents=True)
  (run / 'config.gin').write_text('')
  (run / 'final_prefix.npz').write_bytes(b'')
  config = str(run / 'config.gin')
  for path in (run, run / 'checkpoints', run / 'checkpoints' / '6', run / 'numpy_checkpoints' / 'checkpoint_6',
               run / 'final_prefix.npz'):
    assert run_dir.run_dir_of(str(path)) == str(run), path
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'config.gin').write_text('')  # a config.gin without checkpoints: no run directory
  assert run_dir.run_dir_of(str(tmp_path / 'other')) is None and run_dir.run_dir_of(None) is None
  # eval / infer without --gin_file: the run's config, then what undoes training's own settings.
  for command in ('eval', 'infer'):
    assert run_dir.gin_files(command, [], str(run / 'checkpoints' / '6'), None) == [config, run_dir.FROM_RUN_DIR]
    assert run_dir.gin_files(command, [], None, str(run / 'final_prefix.npz')) == [config, run_dir.FROM_RUN_DIR]
  # --gin_file given: those files are the configuration (a run's config.gin among them is followed the same way).
  assert run_dir.gin_files('eval', ['models/t5x_tiny.gin'], str(run), None) == ['models/t5x_tiny.gin']
  assert run_dir.gin_files('infer', [config, 'mine.gin'], None, None) == [config, run_dir.FROM_RUN_DIR, 'mine.gin']
  assert run_dir.gin_files('train', [config], None, None) == [config]  # training reads its files as given
  assert run_dir.gin_files('export', [], str(run), None) == []


def test_one_prompts_labels_name_the_task_of_its_inputs(tiny_gin, tmp_path, capsys):
  prompt = tmp_path / 'prompt.npy'
  np.save(prompt, np.zeros((5, get_config('t5x_tiny').emb_dim), np.float32))
  base = [
      'infer', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_infer.gin', f'--gin_file={tiny_gin}',
      f'--prompt_file={prompt}'
  ]
  code, line = main_error(capsys, base + ['--labels=zzz=a|b'])
  assert code == 2 and "--labels names ['zzz'], which are not the task(s) of these inputs" in line
  inputs = tmp_path / 'inputs.txt'
  inputs.write_text('good movie\n')
  code, line = main_error(
      capsys, base + [f'--input_file={inputs}', '--gin.MIXTURE_OR_TASK_NAME=None', '--labels=a=x|y', '--labels=b=x|y'])
  assert code == 2 and 'one prompt ranks text inputs over one label set; --labels gives 2' in line
  code, line = main_error(
      capsys, base + [
          f'--input_file={inputs}', '--gin.MIXTURE_OR_TASK_NAME=None',
          '--labels=a=negative|a very long label indeed past eight tokens'
      ])
  assert code == 2 and "TASK_FEATURE_LENGTHS['targets']" in line


@pytest.mark.slow
def test_eval_and_infer_read_a_run_directory(tiny_gin, tiny_files, tmp_path, monkeypatch, capsys):
  """A run trained with a relative `--task` is evaluated and served from another directory with nothing but
  --checkpoint (no gin file, no --task, no lengths): the numbers its training reported."""
  model_dir = tmp_path / 'run'
  monkeypatch.chdir(tiny_files['train'].parent)
  spec = 'name=jp_run_dir_task,train=train.tsv,validation=validation.tsv,labels=negative|positive'
  assert cli_main([
      'train', *BASE_GIN, f'--gin_file={tiny_gin}', '--task', spec, "--gin.MIXTURE_OR_TASK_NAME='jp_run_dir_task'",
      f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=2', '--gin.CHECKPOINT_PERIOD=2'
  ]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  final = str(model_dir / 'final_prompt.npy')
  assert summary['final_files'] == {'prompt.npy': final} and summary['prompt_file'] == final
  monkeypatch.chdir(tmp_path)

  predictions = tmp_path / 'predictions.jsonl'
  assert cli_main(['eval', f'--checkpoint={model_dir}', f'--predictions_file={predictions}']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['task'] == 'jp_run_dir_task' and result['split'] == 'validation'
  assert result['metrics']['accuracy'] == pytest.approx(summary['eval_metrics']['accuracy'])
  assert result['metrics']['loss'] == pytest.approx(summary['eval_metrics']['loss'], rel=1e-5)

  # infer on the final file's run: the task's validation split, ranked over its labels as eval ranks them.
  assert cli_main(['infer', f'--prompt_file={final}']) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(records) == summary['eval_metrics']['num_examples']
  for r in records:
    assert r['prediction'] in LABELS and r['prediction_by'] == 'rank_classification'
    assert r['log_likelihood'] == r['score'] < 0 and 'beam_score' not in r
  validation = [row.split('\t') for row in tiny_files['validation'].read_text().splitlines()]
  accuracy = 100 * np.mean([r['prediction'] == target for r, (_, target) in zip(records, validation)])
  assert accuracy == pytest.approx(result['metrics']['accuracy'])
  scored = [json.loads(line) for line in predictions.read_text().splitlines()]  # eval's records: the same fields
  assert [(r['prediction'], r['prediction_by']) for r in scored
         ] == [(r['prediction'], r['prediction_by']) for r in records]
  np.testing.assert_allclose([r['log_likelihood'] for r in scored], [r['log_likelihood'] for r in records], rtol=1e-6)
  # A step dir, text inputs without the task: decoded, each row's beam score named as such.
  inputs = tmp_path / 'inputs.txt'
  inputs.write_text('good movie plot\nawful film acting\n')
  assert cli_main([
      'infer', f'--checkpoint={model_dir / "checkpoints" / "2"}', f'--input_file={inputs}',
      '--gin.MIXTURE_OR_TASK_NAME=None'
  ]) == 0
  decoded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r['input'] for r in decoded] == ['good movie plot', 'awful film acting']
  assert all(r['prediction_by'] == 'beam_search' and r['beam_score'] == r['score'] for r in decoded)
  # ... or ranked over --labels given for them: the log-likelihoods of the task's own ranking.
  assert cli_main([
      'infer', f'--checkpoint={model_dir}', f'--input_file={inputs}', '--gin.MIXTURE_OR_TASK_NAME=None',
      f'--labels=mine={"|".join(LABELS)}'
  ]) == 0
  ranked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert cli_main(['infer', f'--checkpoint={model_dir}', f'--input_file={inputs}']) == 0
  by_task = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r['prediction'] for r in ranked] == [r['prediction'] for r in by_task]
  np.testing.assert_allclose([r['log_likelihood'] for r in ranked], [r['log_likelihood'] for r in by_task])
