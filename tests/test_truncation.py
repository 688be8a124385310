"""No silent truncation: examples longer than TASK_FEATURE_LENGTHS are cut as seqio cuts them, counted per split
and said once (one log line), eval writes the counts, and a `--task` task takes its lengths from its data
unless the user sets them."""
import functools
import json
import logging
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from jaxprompt.cli import gin_config, task_lengths
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import configs
from jaxprompt.commands import train as trainer
from jaxprompt.data import custom, pipeline, truncation
from jaxprompt.formats import macros
from jaxprompt.models.config import get_config
from tests.helpers import regroup
from tests.tiny_task import LABELS

TASK = 'jp_test_long_rows'
LENGTHS = {'inputs': 16, 'targets': 8}
WORDS = 'good great movie film plot story acting bad awful dull'.split()

pytestmark = pytest.mark.usefixtures('clean_gin')  # in-process runs leave gin bindings behind


def _rows(count: int, long_every: int, seed: int) -> list[tuple[str, str]]:
  """(input, label) rows of 1-2 words, and every `long_every`-th of 6 to 30 words."""
  rng = np.random.RandomState(seed)
  rows = []
  for i in range(count):
    words = int(rng.randint(6, 31)) if i % long_every == 0 else int(rng.randint(1, 3))
    rows.append((' '.join(rng.choice(WORDS, words)), LABELS[i % 2]))
  return rows


@pytest.fixture(scope='module')
def long_files(tiny_files, tmp_path_factory):
  folder = tmp_path_factory.mktemp('long_rows')
  files = {'vocab': tiny_files['vocab']}
  for split, count, every, seed in (('train', 24, 3, 0), ('validation', 10, 4, 1)):
    files[split] = folder / f'{split}.tsv'
    files[split].write_text(''.join(f'{x}\t{y}\n' for x, y in _rows(count, every, seed)))
  return files


@pytest.fixture(scope='module')
def vocabulary(long_files):
  return configs.vocabulary(str(long_files['vocab']), 0)


@pytest.fixture(scope='module')
def long_task(long_files, vocabulary):
  return custom.register_file_task(TASK, train=str(long_files['train']), validation=str(long_files['validation']),
                                   label_set=LABELS, vocabulary=vocabulary)


def _token_counts(path, vocabulary) -> dict[str, np.ndarray]:
  """Each row's tokens with EOS, from the file itself."""
  rows = [line.split('\t') for line in path.read_text().splitlines()]
  return {k: np.asarray([len(vocabulary.encode(r[i])) + 1 for r in rows]) for i, k in enumerate(('inputs', 'targets'))}


def _expected(path, vocabulary, lengths) -> dict:
  counts = _token_counts(path, vocabulary)
  over = {k: counts[k] > lengths[k] for k in counts}
  out = {'examples': len(counts['inputs']), 'truncated': int((over['inputs'] | over['targets']).sum())}
  for k in counts:
    out.update({f'truncated/{k}': int(over[k].sum()), f'longest/{k}': int(counts[k].max()), f'length/{k}': lengths[k]})
  return out


def _truncation_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if 'examples were truncated' in line]


# ------------------------------------------------------------------------------------ counting and cutting


def test_a_split_is_cut_as_seqio_cuts_it_and_counted_once(long_task, long_files, vocabulary, caplog):
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    examples, found = pipeline.read_examples(long_task, LENGTHS, 'validation')
  expected = _expected(long_files['validation'], vocabulary, LENGTHS)
  assert expected['truncated'] >= 2 and found.metrics() == expected
  seqio_cut = long_task.get_dataset(LENGTHS, split='validation', shuffle=False, num_epochs=1).as_numpy_iterator()
  for ours, theirs in zip(examples, seqio_cut, strict=True):
    for k in ('inputs', 'targets'):
      np.testing.assert_array_equal(ours[k], theirs[k])
  [line] = _truncation_lines('\n'.join(caplog.messages))
  longest = expected['longest/inputs']
  assert (f"task '{TASK}' split 'validation': {expected['truncated']} of 10 examples were truncated" in line and
          f'the longest {longest} tokens' in line)
  assert f'--gin.TASK_FEATURE_LENGTHS="{{\'inputs\': {truncation.round_up(longest)}, \'targets\': 8}}"' in line


def test_a_file_tasks_training_split_is_counted_up_front(long_task, long_files, vocabulary, caplog):
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    assert pipeline.training_count(long_task, LENGTHS, 'train') is None  # said now, nothing left to count
  expected = _expected(long_files['train'], vocabulary, LENGTHS)
  [line] = _truncation_lines('\n'.join(caplog.messages))
  assert f"split 'train': {expected['truncated']} of 24 examples were truncated" in line


@pytest.mark.parametrize('pack', [pytest.param(False, marks=pytest.mark.slow), True])
def test_a_stream_counts_each_example_and_keeps_its_rows(long_task, pack, caplog):
  count = truncation.StreamCount('the stream', LENGTHS, pipeline.eos_features(long_task))
  make = lambda c: pipeline.train_dataset(long_task, LENGTHS, 'train', 4, seed=3, pack=pack, prompt_slots=2, count=c)
  counted = list(make(count).take(4).as_numpy_iterator())
  for ours, plain in zip(counted, make(None).take(4).as_numpy_iterator(), strict=True):
    for k in plain:
      np.testing.assert_array_equal(ours[k], plain[k], k)
  # Every example read is counted once, packed or not (a packed row holds several).
  rows = sum(int(b['encoder_segment_ids'].max(1).sum()) if pack else len(b['encoder_input_tokens']) for b in counted)
  found = count.truncation()
  assert found.examples >= rows and 0 < found.truncated < found.examples
  assert found.cut['inputs'] == found.truncated and found.longest['inputs'] > LENGTHS['inputs']
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    count.report_once()
    count.report_once()
  [line] = _truncation_lines('\n'.join(caplog.messages))
  said = re.search(
      r'^the stream \(the first (\d+) examples read\): (\d+) of (\d+) examples were truncated, longer '
      r"than TASK_FEATURE_LENGTHS .*\(inputs: (\d+) cut, the longest (\d+) tokens; targets: 0 cut", line)
  read, truncated, examples, cut, longest = map(int, said.groups())
  assert read == examples >= rows and cut == truncated >= found.truncated and longest >= found.longest['inputs']


def _read_rows(path, split, shuffle_files, seed=None):
  del shuffle_files, seed
  rows = [line.split('\t') for line in path[split].read_text().splitlines()]
  return tf.data.Dataset.from_tensor_slices({k: [r[i] for r in rows] for i, k in enumerate(('inputs', 'targets'))})


@pytest.fixture(scope='module')
def stream_task(long_files, vocabulary):
  """The same rows as a plain seqio task (not a file task: its training split is counted as it streams)."""
  name = 'jp_test_long_rows_stream'
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(functools.partial(_read_rows, long_files), splits=['train',
                                                                                                 'validation']),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={k: seqio.Feature(vocabulary) for k in ('inputs', 'targets')})
  return name


@pytest.mark.slow
def test_training_says_its_stream_once_and_evaluations_carry_the_counts(train_kwargs, stream_task, long_files,
                                                                        vocabulary, tmp_path, caplog):
  kwargs = regroup(train_kwargs, data=dict(mixture_or_task_name=stream_task), evaluation=dict(task_metrics=False),
                   schedule=dict(train_steps=4, eval_period=2, checkpoint_period=4))
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    result = trainer.train(str(tmp_path), **kwargs)
  expected = _expected(long_files['validation'], vocabulary, LENGTHS)
  assert result.eval_metrics['truncation'] == expected
  history = [json.loads(line) for line in (tmp_path / 'eval_metrics.jsonl').read_text().splitlines()]
  assert [h['truncation'] for h in history] == [expected, expected]
  lines = _truncation_lines('\n'.join(caplog.messages))
  assert len(lines) == 2  # the validation split when read, the stream at the first of the two evaluations
  assert lines[0].startswith(f"task '{stream_task}' split 'validation': {expected['truncated']} of 10 examples")
  assert re.match(rf"task '{stream_task}' split 'train' \(the first (\d+) examples read\): \d+ of \1 examples",
                  lines[1])


# ------------------------------------------------------------------------------------ the command line


@pytest.fixture(scope='module')
def prompt_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('prompt') / 'prompt.npy'
  np.save(path, np.random.RandomState(0).uniform(-0.5, 0.5, (3, get_config('t5x_tiny').emb_dim)).astype(np.float32))
  return path


def _command(name, long_files, fixtures_dir, *extra):
  spec = f"name={TASK},train={long_files['train']},validation={long_files['validation']},labels={'|'.join(LABELS)}"
  return [
      name, '--gin_file=models/t5x_tiny.gin', f'--gin_file=runs/prompt_{name}.gin', '--task', spec,
      f"--gin.VOCABULARY_PATH='{long_files['vocab']}'",
      f"--gin.T5X_TINY_CHECKPOINT='{fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'}'", '--gin.BATCH_SIZE=4',
      '--gin.LENGTH_BUCKETS=None', *extra
  ]


def _eval(capsys, long_files, fixtures_dir, prompt_file, tmp_path, *extra) -> tuple[dict, str]:
  output = tmp_path / 'metrics.json'
  assert cli_main(
      _command('eval', long_files, fixtures_dir, f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f'--prompt_file={prompt_file}',
               f'--output={output}', *extra)) == 0
  return json.loads(output.read_text())['metrics'], capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_the_users_lengths_writes_the_counts_and_says_them_once(long_files, vocabulary, fixtures_dir,
                                                                          prompt_file, tmp_path, capsys):
  metrics, stderr = _eval(capsys, long_files, fixtures_dir, prompt_file, tmp_path,
                          '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 8}')
  assert metrics['truncation'] == _expected(long_files['validation'], vocabulary, LENGTHS)
  assert metrics['num_examples'] == 10
  [line] = _truncation_lines(stderr)
  assert f"task '{TASK}' split 'validation'" in line
  assert 'from the data of task' not in stderr  # set by the user: exactly what they set


@pytest.mark.slow
def test_a_task_without_lengths_takes_them_from_its_data(long_files, vocabulary, fixtures_dir, prompt_file, tmp_path,
                                                         capsys):
  metrics, stderr = _eval(capsys, long_files, fixtures_dir, prompt_file, tmp_path)  # runs/prompt_eval.gin's 512/16
  derived = _derived(long_files, vocabulary)
  assert metrics['truncation']['truncated'] == 0
  assert {k: metrics['truncation'][f'length/{k}'] for k in derived} == derived
  assert f"TASK_FEATURE_LENGTHS = {derived} from the data of task '{TASK}'" in stderr
  assert not _truncation_lines(stderr)


@pytest.mark.slow
def test_infer_on_long_text_lines_says_it_once(long_files, fixtures_dir, prompt_file, tmp_path, capsys):
  inputs = tmp_path / 'inputs.txt'
  inputs.write_text('good movie\n' + ' '.join(['great acting plot'] * 8) + '\n' + ' '.join(['dull film'] * 9) + '\n')
  out = tmp_path / 'predictions.jsonl'
  assert cli_main(
      _command('infer', long_files, fixtures_dir, f'--prompt_file={prompt_file}', f'--input_file={inputs}',
               f'--output={out}', '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 8}')) == 0
  assert len(out.read_text().splitlines()) == 3
  [line] = _truncation_lines(capsys.readouterr().err)
  assert line.split(' ', 1)[1].startswith('text inputs: 2 of 3 examples were truncated')


# ------------------------------------------------------------------------------------ who set the lengths


def _derived(long_files, vocabulary) -> dict[str, int]:
  """What the data gives: the longest inputs and targets (the labels too) of both splits, rounded up to 8."""
  counts = [_token_counts(long_files[s], vocabulary) for s in ('train', 'validation')]
  labels = max(len(vocabulary.encode(label)) + 1 for label in LABELS)
  longest = {k: max(int(c[k].max()) for c in counts) for k in ('inputs', 'targets')}
  return {
      'inputs': truncation.round_up(longest['inputs']), 'targets': truncation.round_up(max(longest['targets'], labels))
  }


@pytest.mark.parametrize('flags, expected', [((), 'derived'),
                                             (('TASK_FEATURE_LENGTHS = {"inputs": 16, "targets": 8}',), LENGTHS)])
def test_a_task_flag_takes_its_lengths_from_the_data_unless_the_user_sets_them(flags, expected, long_files, vocabulary,
                                                                               fixtures_dir, long_task, caplog):
  files, bindings = gin_config.prepare(
      ['models/t5x_tiny.gin', 'runs/prompt_eval.gin'],
      [f"VOCABULARY_PATH = '{long_files['vocab']}'", f"MIXTURE_OR_TASK_NAME = '{TASK}'", *flags])
  gin_config.import_configurables()
  gin_config.parse(files, bindings)
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    task_lengths.derive_unless_set([TASK], files, bindings)
  lengths = macros.bound('TASK_FEATURE_LENGTHS')
  if expected == 'derived':
    assert lengths == _derived(long_files, vocabulary) and lengths['inputs'] not in (16, 512)
    assert f"TASK_FEATURE_LENGTHS = {lengths} from the data of task '{TASK}'" in caplog.text
  else:
    assert lengths == expected and 'from the data' not in caplog.text
  task_lengths.derive_unless_set(['another_task'], files, [])  # not the task MIXTURE_OR_TASK_NAME names: no change
  assert macros.bound('TASK_FEATURE_LENGTHS') == lengths


@pytest.mark.parametrize('text, user_set', [
    ("TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}", True),
    ("jaxprompt.DataConfig.task_feature_lengths = {'inputs': 8, 'targets': 4}", True),
    ('jaxprompt.DataConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS', False),
    ("include 'runs/demo.gin'\nBATCH_SIZE = 4", False),
    ("include '{other}'", True),
])
def test_only_the_users_own_bindings_count_as_set(text, user_set, tmp_path):
  other = tmp_path / 'other.gin'
  other.write_text("TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}\n")
  mine = tmp_path / 'mine.gin'
  mine.write_text(text.replace('{other}', str(other)) + '\n')
  shipped = [gin_config.resolve_gin_file(f, gin_config.search_paths()) for f in ('models/demo.gin', 'runs/demo.gin')]
  assert not task_lengths.user_sets_lengths(shipped, [])  # the shipped 24/4 is the demo task's, not the user's
  assert task_lengths.user_sets_lengths([*shipped, str(mine)], []) == user_set
  if not text.startswith('include'):  # a command-line binding includes nothing
    assert task_lengths.user_sets_lengths(shipped, [gin_config.Binding(text)]) == user_set


def test_derived_lengths_are_rounded_up_and_capped_at_the_limit(monkeypatch):
  from jaxprompt.data import task_spec  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(custom, 'is_file_task', lambda name: True)
  monkeypatch.setattr(custom, 'longest_lengths', lambda name: {'inputs': 3000, 'targets': 3})
  assert task_spec.derived_lengths('any') == {'inputs': truncation.AUTO_LIMIT, 'targets': 8}
  monkeypatch.setattr(custom, 'longest_lengths', lambda name: {'inputs': 41, 'targets': 16})
  assert task_spec.derived_lengths('any') == {'inputs': 48, 'targets': 16}
