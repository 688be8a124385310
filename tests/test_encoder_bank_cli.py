"""Encoder prompt banks and multi-task runs with per-task heads through the CLI, in this process, on the tiny BERT
folder (tests/encoder_tiny.py): `infer --prompt NAME=FILE` over two single-task runs' files (a classification
prompt and a regression P-tuning v2 prefix, each read with its final_head.npz) answers a mixed JSONL stream with
each row's task as that run alone would; with trained runs (slow), run dirs serve as well and `eval` of the bank
scores a task with its own head as its run did; a multi-task run with heads/multitask.gin on a mixture of
single-text and pair classifications and a regression evaluates each task with its own head and metric, and its
step dir serves as the bank."""
import json

import gin
import jax
import numpy as np
import pytest

from jaxprompt.cli.main import main as cli_main
from jaxprompt.data import label_files, label_tasks
from jaxprompt.methods.prefix_tuning import PrefixTuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.methods.with_head import HEAD_FILE, WithHead
from jaxprompt.models.heads import HeadConfig
from tests.encoder_helpers import randomized, tiny, write_files
from tests.test_cli import main_error
from tests.tiny_task import LABELS

SENTIMENT, SCORE, FLIPPED = 'jp_bank_cli_sentiment', 'jp_bank_cli_score', 'jp_bank_cli_flipped'
PAIRED = 'jp_bank_cli_paired'
MIXTURE = 'jp_bank_cli_mixture'
MIXED = (SENTIMENT, FLIPPED, PAIRED, SCORE)  # single-text and pair classification, and a regression, in one stream
LENGTHS = "{'inputs': 16, 'targets': 1}"
TEXTS = ['good movie', 'awful plot', 'nice acting film', 'dull story']


def model_flags(folder) -> list[str]:
  return ['--gin_file=models/hf_encoder.gin', f"--gin.HF_MODEL_DIR='{folder}'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}']


def train(folder, model_dir, task: str, *method_files: str) -> None:
  argv = [
      'train', *model_flags(folder), '--gin_file=runs/prompt_tuning.gin', *method_files,
      f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.MODEL_DIR='{model_dir}'", '--gin.BATCH_SIZE=8',
      '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=2', '--gin.CHECKPOINT_PERIOD=2', '--gin.PREFIX_LENGTH=2',
      '--gin.PROMPT_LENGTH=3', '--gin.TASK_PROMPT_LENGTH=2'
  ]
  try:
    assert cli_main(argv) == 0
  finally:
    gin.clear_config()


def infer_rows(capsys, argv) -> list[dict]:
  capsys.readouterr()
  try:
    assert cli_main(['infer', *argv]) == 0
  finally:
    gin.clear_config()
  return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]


def _retarget(path, out, label) -> str:
  """`path`'s TSV with each row's label replaced by `label(old label)`."""
  rows = [line.split('\t') for line in path.read_text().splitlines()]
  out.write_text(''.join(f'{text}\t{label(old)}\n' for text, old in rows))
  return str(out)


def _paired(path, out) -> str:
  """`path`'s TSV as JSONL text pairs: the text, then 'so it was <label>', labelled 'yes' (every other row: the
  other label, 'no')."""
  rows = [line.split('\t') for line in path.read_text().splitlines()]
  out.write_text(''.join(
      json.dumps({
          'text': text, 'pair': f'so it was {y if i % 2 else LABELS[1 - LABELS.index(y)]}', 'label': 'yes' if i %
                                                                                                     2 else 'no'
      }) + '\n' for i, (text, y) in enumerate(rows)))
  return str(out)


@pytest.fixture(scope='module')
def tasks(tiny_files):
  """Four label-file tasks over the tiny TSV's texts: sentiment, a score (1.0 / -1.0: regression), the sentiment
  flipped, and text pairs (does the second text name the sentiment); MIXTURE mixes them all 1:1:1:1."""
  folder = tiny_files['train'].parent
  swap = dict(zip(LABELS, reversed(LABELS)))
  for name, label, label_set in ((SENTIMENT, str, LABELS), (SCORE, lambda y: str(2.0 * LABELS.index(y) - 1.0), None),
                                 (FLIPPED, swap.get, LABELS)):
    label_files.register_label_file_task(
        name, train=_retarget(tiny_files['train'], folder / f'{name}_train.tsv', label),
        validation=_retarget(tiny_files['validation'], folder / f'{name}_validation.tsv', label), label_set=label_set)
  label_files.register_label_file_task(PAIRED, train=_paired(tiny_files['train'], folder / 'paired_train.jsonl'),
                                       validation=_paired(tiny_files['validation'], folder / 'paired_validation.jsonl'),
                                       pair_field='pair', label_set=('no', 'yes'))
  label_tasks.register_mixture(MIXTURE, [(t, 1.0) for t in MIXED])
  yield
  for name in (SENTIMENT, SCORE, FLIPPED, PAIRED):
    label_tasks._TASKS.pop(name, None)  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  from tests.encoder_tiny import tiny_bert_folder  # pylint: disable=g-import-not-at-top
  return tiny_bert_folder(tmp_path_factory.mktemp('tiny_bert'))


@pytest.fixture(scope='module')
def runs(tiny_bert, tasks, tmp_path_factory):
  """{task: its MODEL_DIR}: prompt tuning + a classification head, P-tuning v2 + a regression head."""
  root = tmp_path_factory.mktemp('bank_runs')
  train(tiny_bert, root / 'a', SENTIMENT, '--gin_file=heads/classification.gin')
  train(tiny_bert, root / 'b', SCORE, '--gin_file=methods/p_tuning_v2.gin', '--gin_file=heads/regression.gin')
  return {SENTIMENT: root / 'a', SCORE: root / 'b'}


def _requests(tmp_path, tasks: list[str]):
  path = tmp_path / 'requests.jsonl'
  path.write_text(''.join(json.dumps({'task': t, 'input': x, 'id': i}) + '\n' for i, (t, x) in enumerate(tasks)))
  return path


def _alone(capsys, tmp_path, tiny_bert, task, source: list[str]) -> dict[str, dict]:
  """{input: record} of `source` alone on TEXTS, answered with task `task`'s label names."""
  texts = tmp_path / f'{task}.txt'
  texts.write_text('\n'.join(TEXTS) + '\n')
  rows = infer_rows(capsys, [
      *model_flags(tiny_bert), '--gin_file=runs/prompt_infer.gin', f"--gin.MIXTURE_OR_TASK_NAME='{task}'", *source,
      '--input_file',
      str(texts)
  ])
  return {r['input']: r for r in rows}


def _assert_same(row, want):
  assert row['prediction_by'] == want['prediction_by'] == 'head'
  if isinstance(want['prediction'], str):
    assert row['prediction'] == want['prediction'] and row['prediction'] in LABELS
    np.testing.assert_allclose(row['probability'], want['probability'], atol=2e-5)
  else:
    np.testing.assert_allclose(row['prediction'], want['prediction'], atol=2e-5)


@pytest.fixture(scope='module')
def written_runs(tmp_path_factory):
  """{task: its run's final method file}: what prompt tuning + a classification head and P-tuning v2 + a regression
  head leave in MODEL_DIR (final_<file> and final_head.npz beside it), random parameters, the tiny BERT's shapes."""
  config, frozen = tiny()  # the tiny BERT folder's shapes (its vocabulary is larger: no method reads it)
  runs = {
      SENTIMENT: WithHead.for_config(config, PromptTuning(length=3, embed_dim=config.emb_dim),
                                     HeadConfig('classification', 2, use_pooler=True)),
      SCORE: WithHead.for_config(config,
                                 PrefixTuning.for_config(config, length=2, kinds=('encoder_self',), projection=False),
                                 HeadConfig('regression')),
  }
  out = {}
  for seed, (task, method) in enumerate(runs.items()):
    folder = tmp_path_factory.mktemp(task)
    params = randomized(jax.eval_shape(method.init, jax.random.PRNGKey(seed), frozen), seed)
    paths = write_files(folder, method.numpy_copy(params), prefix='final_')
    out[task] = next(p for name, p in paths.items() if name != HEAD_FILE)
  return out


def _bank_stream(capsys, tmp_path, tiny_bert, files) -> tuple[list, list]:
  """(requests, records) of a mixed stream of the two tasks through `infer --prompt NAME=FILE`, 4 rows a batch."""
  stream = [(SENTIMENT if i % 3 else SCORE, TEXTS[i % len(TEXTS)]) for i in range(10)]
  bank = [f'--prompt={t}={f}' for t, f in files.items()]
  rows = infer_rows(capsys, [
      *model_flags(tiny_bert), '--gin_file=runs/prompt_infer.gin', *bank, '--input_file',
      str(_requests(tmp_path, stream)), '--gin.BATCH_SIZE=4'
  ])
  return stream, rows


def test_a_bank_of_two_runs_answers_each_row_as_its_run_alone(written_runs, tasks, tiny_bert, tmp_path, capsys,
                                                              clean_gin):
  stream, rows = _bank_stream(capsys, tmp_path, tiny_bert, written_runs)
  assert [(r['task'], r['input'], r['id']) for r in rows] == [(t, x, i) for i, (t, x) in enumerate(stream)]
  alone = {t: _alone(capsys, tmp_path, tiny_bert, t, ['--prompt_file', str(f)]) for t, f in written_runs.items()}
  for row in rows:
    _assert_same(row, alone[row['task']][row['input']])
  assert len({r['prediction'] for r in rows if r['task'] == SCORE}) > 1  # the regression rows are not a constant
  assert len({round(r['probability'], 6) for r in rows if r['task'] == SENTIMENT}) > 1  # nor the class rows


@pytest.mark.slow
def test_a_bank_of_two_trained_runs_evaluates_each_task_with_its_head(runs, tiny_bert, tmp_path, capsys, clean_gin):
  # Run dirs as the sources: the step's prompt.npy (from its orbax state) and prefix.npz, each with its head.npz.
  _, rows = _bank_stream(capsys, tmp_path, tiny_bert, runs)
  files = {SENTIMENT: runs[SENTIMENT] / 'final_prompt.npy', SCORE: runs[SCORE] / 'final_prefix.npz'}
  _, by_files = _bank_stream(capsys, tmp_path, tiny_bert, files)
  for row, other in zip(rows, by_files):
    _assert_same(row, other)
  out = tmp_path / 'eval.json'
  assert cli_main([
      'eval', *model_flags(tiny_bert), '--gin_file=runs/prompt_eval.gin', f"--gin.MIXTURE_OR_TASK_NAME='{SENTIMENT}'",
      *[f'--prompt={t}={f}' for t, f in files.items()], '--output',
      str(out)
  ]) == 0
  final = json.loads((runs[SENTIMENT] / 'eval_metrics.json').read_text())  # the run's own final evaluation
  metrics = json.loads(out.read_text())['metrics']
  assert metrics['accuracy'] == final['accuracy']
  np.testing.assert_allclose(metrics['loss'], final['loss'], rtol=1e-5)


def test_bank_errors_are_one_line(written_runs, tasks, tiny_bert, tmp_path, capsys, clean_gin):
  flags = [*model_flags(tiny_bert), '--gin_file=runs/prompt_infer.gin']
  bank = [f'--prompt={t}={f}' for t, f in written_runs.items()]
  requests = str(_requests(tmp_path, [('nope', 'x')]))
  code, line = main_error(capsys, ['infer', *flags, *bank, '--input_file', requests])
  assert code == 2 and "task 'nope' is not in the prompt bank" in line
  gin.clear_config()
  code, line = main_error(capsys, ['infer', *flags, *bank, '--ensemble', '--input_file', requests])
  assert code == 2 and 'drop --ensemble' in line
  gin.clear_config()
  alone = str(written_runs[SENTIMENT]).replace('final_prompt.npy', 'prompt.npy')  # no head.npz beside it
  np.save(alone, np.load(written_runs[SENTIMENT]))
  code, line = main_error(capsys, ['infer', *flags, f'--prompt=a={alone}', *bank[1:], '--input_file', requests])
  assert code == 2 and "prompt 'a': a bank with heads holds one-task runs" in line


@pytest.fixture(scope='module')
def multitask_run(tiny_bert, tasks, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('multitask') / 'run'
  train(tiny_bert, model_dir, MIXTURE, '--gin_file=methods/multitask_prompts.gin', '--gin_file=heads/multitask.gin')
  return model_dir


@pytest.mark.slow
def test_a_multitask_run_with_heads_evaluates_each_task_and_its_step_dir_is_the_bank(
    multitask_run, tiny_bert, tmp_path, capsys, clean_gin):
  final = json.loads((multitask_run / 'eval_metrics.json').read_text())
  # Each task by its own head and metric: the classifications' accuracy, the regression's correlations.
  assert {f'{t}/{m}' for t in (SENTIMENT, FLIPPED, PAIRED) for m in ('accuracy', 'loss')} <= set(final)
  assert {f'{SCORE}/{m}' for m in ('pearson_corrcoef', 'spearman_corrcoef', 'loss')} <= set(final)
  assert f'{SCORE}/accuracy' not in final and f'{PAIRED}/pearson_corrcoef' not in final
  step = multitask_run / 'numpy_checkpoints' / 'checkpoint_2'
  for task in MIXED:
    assert (step / f'{task}.prompt.npy').is_file() and (step / f'{task}.head.npz').is_file()
    assert (multitask_run / f'final_{task}.head.npz').is_file()
  out = tmp_path / 'eval.json'
  assert cli_main(['eval', '--checkpoint', str(step), '--output', str(out)]) == 0
  gin.clear_config()
  metrics = json.loads(out.read_text())['metrics']
  for task in (SENTIMENT, FLIPPED, PAIRED):
    assert metrics[f'{task}/accuracy'] == final[f'{task}/accuracy']
  np.testing.assert_allclose(metrics[f'{SCORE}/pearson_corrcoef'], final[f'{SCORE}/pearson_corrcoef'], rtol=1e-4)
  stream = [(FLIPPED if i % 2 else SENTIMENT, TEXTS[i % len(TEXTS)]) for i in range(6)]
  rows = infer_rows(capsys, ['--checkpoint', str(step), '--input_file', str(_requests(tmp_path, stream))])
  named = infer_rows(capsys, [
      *model_flags(tiny_bert), '--gin_file=runs/prompt_infer.gin', f'--prompt={FLIPPED}={step}',
      f'--prompt={SENTIMENT}={step}', '--input_file',
      str(_requests(tmp_path, stream))
  ])
  alone = {
      t: _alone(capsys, tmp_path, tiny_bert, t, ['--prompt_file', str(step / f'{t}.prompt.npy')])
      for t in (SENTIMENT, FLIPPED)
  }
  for row, other in zip(rows, named):
    _assert_same(row, alone[row['task']][row['input']])
    _assert_same(other, row)
