"""Many prompts over one model from the command line: `infer --prompt NAME=FILE` serving mixed-task JSONL
requests in input order, ensembles in `eval` / `infer`, and one clear error per bad request."""
import io
import json
import sys

import numpy as np
import pytest

from jaxprompt.cli.main import main as cli_main
from jaxprompt.methods import kv_prefix
from jaxprompt.models.config import get_config
from tests.test_cli import error_line
from tests.tiny_task import LABELS

CFG = get_config('t5x_tiny')

pytestmark = pytest.mark.usefixtures('clean_gin')  # in-process runs leave gin bindings behind


@pytest.fixture(scope='module')
def prompt_files(tmp_path_factory):
  """Three tasks' files: prompts of 3 and 5 rows, and a decoder-self + cross prefix of 2 rows."""
  folder = tmp_path_factory.mktemp('prompts')
  rs = np.random.RandomState(0)
  files = {}
  for name, length in (('a', 3), ('b', 5)):
    files[name] = folder / f'{name}.npy'
    np.save(files[name], rs.uniform(-0.5, 0.5, (length, CFG.emb_dim)).astype(np.float32))
  shape = (CFG.num_decoder_layers, 2, CFG.num_heads, CFG.head_dim)
  rows = {
      k: (rs.normal(size=shape).astype(np.float32), rs.normal(size=shape).astype(np.float32))
      for k in ('decoder_self', 'cross')
  }
  files['c'] = kv_prefix.save_prefix(folder / 'c_prefix.npz', rows, 'positions')
  return {k: str(v) for k, v in files.items()}


def _base(tiny_gin, command='infer'):
  return [
      command, '--gin_file=models/t5x_tiny.gin',
      f'--gin_file=runs/prompt_{"infer" if command == "infer" else "eval"}.gin', f'--gin_file={tiny_gin}'
  ]


def _records(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]


@pytest.mark.slow
def test_mixed_requests_are_answered_in_order_as_each_task_alone(tiny_gin, prompt_files, tmp_path, capsys):
  texts = ['good movie plot', 'awful film', 'a fine cast', 'bad acting here', 'great', 'dull and slow', 'nice']
  tasks = ['a', 'c', 'a', 'c', 'b', 'b', 'a']  # batches of 4: the first holds no 5-row prompt (cut to 3 rows)
  requests = tmp_path / 'requests.jsonl'
  requests.write_text(''.join(
      json.dumps({'task': t, 'input': x, 'id': i}) + '\n' for i, (t, x) in enumerate(zip(tasks, texts))))
  prompts = [f'--prompt={n}={f}' for n, f in prompt_files.items()]
  labels = '|'.join(LABELS)
  assert cli_main(_base(tiny_gin) + prompts + [f'--labels=a={labels}', f'--input_file={requests}']) == 0
  mixed = _records(capsys)
  assert [r['id'] for r in mixed] == list(range(len(texts))) and [r['task'] for r in mixed] == tasks
  assert all(r['prediction'] in LABELS for r in mixed if r['task'] == 'a')
  # Each task alone: the single-prompt path (b, c decode) and a one-prompt bank (a ranks its labels).
  for name in ('b', 'c'):
    alone = tmp_path / f'{name}.txt'
    alone.write_text(''.join(x + '\n' for t, x in zip(tasks, texts) if t == name))
    assert cli_main(
        _base(tiny_gin) +
        [f'--prompt_file={prompt_files[name]}', f'--input_file={alone}', '--gin.MIXTURE_OR_TASK_NAME=None']
    ) == 0  # no task: no labels to rank
    want = _records(capsys)
    got = [r for r in mixed if r['task'] == name]
    assert [r['prediction'] for r in got] == [r['prediction'] for r in want]
    assert all(r['prediction_by'] == 'beam_search' for r in got + want)
    np.testing.assert_allclose([r['beam_score'] for r in got], [r['beam_score'] for r in want], atol=1e-4)
  only_a = tmp_path / 'a.jsonl'
  only_a.write_text(''.join(json.dumps({'task': 'a', 'input': x}) + '\n' for t, x in zip(tasks, texts) if t == 'a'))
  assert cli_main(
      _base(tiny_gin) + [f'--prompt=a={prompt_files["a"]}', f'--labels=a={labels}', f'--input_file={only_a}']) == 0
  want = _records(capsys)
  got = [r for r in mixed if r['task'] == 'a']
  assert [r['prediction'] for r in got] == [r['prediction'] for r in want]
  assert all(r['prediction_by'] == 'rank_classification' for r in got + want)
  np.testing.assert_allclose([r['log_likelihood'] for r in got], [r['log_likelihood'] for r in want], atol=1e-4)
  # One prompt (no bank) ranks the same rows over its task's label set by itself: the same answers.
  alone = tmp_path / 'a.txt'
  alone.write_text(''.join(x + '\n' for t, x in zip(tasks, texts) if t == 'a'))
  assert cli_main(
      _base(tiny_gin) + [f'--prompt_file={prompt_files["a"]}', f'--input_file={alone}', '--gin.PROMPT_LENGTH=None']
  ) == 0  # the file's 3 rows
  single = _records(capsys)
  assert [r['prediction'] for r in single] == [r['prediction'] for r in got]
  np.testing.assert_allclose([r['log_likelihood'] for r in single], [r['log_likelihood'] for r in got], atol=1e-4)


def test_bad_requests_fail_with_one_line(tiny_gin, prompt_files, tmp_path, capsys, monkeypatch):
  prompts = [f'--prompt={n}={f}' for n, f in prompt_files.items()]
  cases = {
      '{"task": "zzz", "input": "x"}\n': "task 'zzz' is not in the prompt bank", '{"input": "x"}\n': 'names no "task"',
      '{"task": "a"}\n': 'needs a string "input"', 'plain text\n': 'not a JSON object'
  }
  for text, message in cases.items():
    monkeypatch.setattr(sys, 'stdin', io.StringIO(text))
    code = cli_main(_base(tiny_gin) + prompts + ['--input_file=-'])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and message in line and 'stdin:1' in line, line
  monkeypatch.setattr(sys, 'stdin', io.StringIO('{"task": "a", "input": "x"}\n'))
  code = cli_main(_base(tiny_gin) + prompts + ['--labels=zzz=x|y', '--input_file=-'])
  assert code == 2 and 'zzz' in error_line(capsys.readouterr().err)
  # An empty label (a doubled '|') would be a candidate, and win: refused by name, as is a repeated one.
  for labels, problem in (('negative||positive', 'an empty label'), ('no|yes|no', "the label 'no' twice")):
    monkeypatch.setattr(sys, 'stdin', io.StringIO('{"task": "a", "input": "x"}\n'))
    code = cli_main(_base(tiny_gin) + prompts + [f'--labels=a={labels}', '--input_file=-'])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and f"labels of task 'a' {labels.split('|')} hold {problem}" in line, line
  monkeypatch.setattr(sys, 'stdin', io.StringIO('{"task": "a", "input": "x"}\n'))
  code = cli_main(_base(tiny_gin) + ['--prompt=a=/no/such.npy', '--input_file=-'])
  assert code == 2 and '/no/such.npy' in error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_ensemble_eval_reports_each_prompt_and_the_vote(tiny_gin, prompt_files, tmp_path, capsys):
  rs = np.random.RandomState(1)
  names = []
  for k in range(3):
    path = tmp_path / f'p{k}.npy'
    np.save(path, rs.uniform(-0.5, 0.5, (5, CFG.emb_dim)).astype(np.float32))
    names.append((f'p{k}', path))
  assert cli_main(_base(tiny_gin, 'eval') + [f'--prompt={n}={p}' for n, p in names]) == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])['metrics']
  assert {'p0/accuracy', 'p1/accuracy', 'p2/accuracy', 'ensemble/accuracy'} <= set(metrics)
  assert cli_main(_base(tiny_gin, 'eval') + [f'--prompt_file={names[1][1]}']) == 0
  alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])['metrics']
  assert metrics['p1/accuracy'] == pytest.approx(alone['accuracy'])
  # infer --ensemble: each input's vote and every prompt's answer.
  inputs = tmp_path / 'inputs.txt'
  inputs.write_text('good movie plot\nawful film acting\n')
  assert cli_main(_base(tiny_gin) + [f'--prompt={n}={p}' for n, p in names] +
                  ['--ensemble', f'--input_file={inputs}']) == 0
  records = _records(capsys)
  assert len(records) == 2 and all(set(r['predictions']) == {'p0', 'p1', 'p2'} for r in records)
  for r in records:
    votes = list(r['predictions'].values())
    assert r['prediction'] in votes and votes.count(r['prediction']) >= max(votes.count(v) for v in votes)


def test_bank_sources_take_a_task_from_a_multitask_file(tmp_path):
  from jaxprompt.commands import bank_files  # pylint: disable=g-import-not-at-top
  from jaxprompt.errors import PromptError  # pylint: disable=g-import-not-at-top
  from jaxprompt.formats import npy_io  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(3)
  prompts = {
      'rte': rs.normal(size=(4, CFG.emb_dim)).astype(np.float32),
      'sst2': rs.normal(size=(6, CFG.emb_dim)).astype(np.float32)
  }
  path = npy_io.write_npz(prompts, str(tmp_path / 'final_prompts.npz'), what='test')
  loaded = bank_files.load_sources({'sst2': path, 'rte': path}, config=CFG)
  for name, (method, params) in loaded.items():
    assert method.length == prompts[name].shape[0]
    np.testing.assert_array_equal(params['prompt'], prompts[name])
  with pytest.raises(PromptError, match=r"tasks \['rte', 'sst2'\].*cola"):
    bank_files.load_sources({'cola': path}, config=CFG)


def test_eval_and_infer_refuse_a_prompt_of_another_model(tiny_gin, tmp_path, capsys):
  """A prompt whose sidecar records another frozen model is refused by name; --allow_other_model lets it in,
  and a bank checks each of its prompts."""
  from jaxprompt.formats import fingerprint_files  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'other.npy'
  np.save(path, np.random.RandomState(2).uniform(-0.5, 0.5, (5, CFG.emb_dim)).astype(np.float32))
  other = {
      'id': '0123456789abcdef', 'config': {'emb_dim': 4096, 'num_encoder_layers': 24}, 'vocabulary': {},
      'embedding': {}
  }
  fingerprint_files.write(fingerprint_files.sidecar_path(path), other)
  code = cli_main(_base(tiny_gin, 'eval') + [f'--prompt_file={path}'])
  line = error_line(capsys.readouterr().err)
  assert code == 2 and 'model 0123456789abcdef (emb_dim=4096' in line and 'emb_dim=32' in line
  assert '--allow_other_model' in line
  assert cli_main(_base(tiny_gin, 'eval') + [f'--prompt_file={path}', '--allow_other_model']) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['model_match'] is False
  requests = tmp_path / 'requests.jsonl'
  requests.write_text('{"task": "x", "input": "good movie"}\n')
  code = cli_main(_base(tiny_gin) + [f'--prompt=x={path}', f'--input_file={requests}'])
  assert code == 2 and 'prompt x=' in error_line(capsys.readouterr().err)
