"""Text tasks (`jaxprompt.data.text_tasks`): a split read without TensorFlow is token for token what the task's seqio
pipeline yields (the demo tasks, TSV / JSONL file tasks), metric fns are sorted as seqio sorts them, an evaluation
through the text task equals the one through its seqio Task, and the registry keeps seqio's registry in step."""
import jax
import numpy as np
import pytest
import seqio

from jaxprompt.commands import configs
from jaxprompt.data import converters, custom, metrics, pipeline, retokenized, tasks, text_tasks
from jaxprompt.demo import model as demo_model
from jaxprompt.demo import tasks as demo_tasks
from jaxprompt.eval import evaluation
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime.runtime import build_runtime
from tests.tiny_task import LENGTHS


def _seqio_examples(task, split, max_examples=None):
  """The split through the seqio pipeline (tokenize, append_eos_after_trim), as eval read it before; `task` a text
  task (its seqio Task) or a seqio Task."""
  task = task.as_seqio() if isinstance(task, text_tasks.TextTask) else task
  ds = task.get_dataset(sequence_length=None, split=split, use_cached=False, shuffle=False, num_epochs=1)
  return list((ds.take(max_examples) if max_examples else ds).as_numpy_iterator())


def _assert_same_examples(got, want):
  assert len(got) == len(want) > 0
  for a, b in zip(got, want):
    assert sorted(a) == sorted(b)
    for key in b:
      if isinstance(b[key], np.ndarray):
        assert a[key].dtype == b[key].dtype and a[key].tolist() == b[key].tolist(), key
      else:
        assert a[key] == b[key], key


@pytest.fixture(scope='module')
def vocabulary(tiny_files):
  return configs.vocabulary(str(tiny_files['vocab']), 0)


@pytest.fixture
def forget():
  """Names registered by the test, forgotten after it (here and in seqio's registry)."""
  names = []
  yield names
  for name in names:
    custom.unregister_file_task(name)


@pytest.mark.parametrize('name, split, count', [('demo_heldout_topic', 'validation', 16),
                                                ('demo_continue', 'train', 12), ('demo_parity', 'validation', 12)])
def test_demo_tasks_read_as_seqio_reads_them(name, split, count):
  task = pipeline.get_provider(name, streams=False)
  assert isinstance(task, text_tasks.TextTask) and split in task.splits
  _assert_same_examples(task.examples(split, count), _seqio_examples(task, split, count))


def test_file_tasks_read_as_seqio_reads_them(tmp_path, vocabulary, forget):
  tsv = tmp_path / 'dev.tsv'
  tsv.write_text(
      'text\tid\tlabel\ngood movie, great plot\t1\tpositive\n\t2\tnegative\n'
      'Ünïcödé — “quotes”  and  spaces \t3\tpositive\n', encoding='utf-8')
  jsonl = tmp_path / 'train.jsonl'
  jsonl.write_text('{"q": "awful acting", "a": "negative"}\n{"q": 12.5, "a": "positive"}\n\n{"q": "x", "a": ""}\n')
  forget.append('jp_text_mixed')
  task = custom.register_file_task('jp_text_mixed', validation=str(tsv), inputs_field='text', targets_field='label',
                                   vocabulary=vocabulary)
  assert isinstance(task, text_tasks.TextTask)
  forget.append('jp_text_q')
  task_q = custom.register_file_task('jp_text_q', train=str(jsonl), inputs_field='q', targets_field='a',
                                     vocabulary=vocabulary)
  _assert_same_examples(task.examples('validation'), _seqio_examples(task, 'validation'))
  _assert_same_examples(task_q.examples('train'), _seqio_examples(task_q, 'train'))
  _assert_same_examples(task_q.examples('train', 2), _seqio_examples(task_q, 'train', 2))
  assert [ex['inputs_pretokenized'] for ex in task.examples('validation')][1] == b''


def test_with_the_models_vocabulary_a_text_task_reads_as_seqios_copy_of_it(tiny_task):
  """A causal LM reads every task with its own tokenizer, its inputs without EOS (`data/retokenized.py`)."""
  other = demo_model.vocabulary()
  text = pipeline.get_provider(tiny_task.name, other, converters.DECODER_ONLY, streams=False)
  assert text is tiny_task.retokenized(other, False) is not tiny_task and text.vocabulary == other
  assert text.output_features['inputs'].add_eos is False and text.labels == tiny_task.labels
  assert pipeline.get_provider(tiny_task.name, tiny_task.vocabulary, streams=False) is tiny_task
  copy = retokenized.retokenized(tiny_task.as_seqio(), other, False)
  _assert_same_examples(text.examples('validation'), _seqio_examples(copy, 'validation'))
  assert text.examples('validation')[0]['inputs'][-1] != other.eos_id


def _score_metric(targets, scores):
  return {'mean_score': float(np.mean(scores))}


def test_metric_fns_are_sorted_as_seqio_sorts_them(tmp_path, vocabulary, forget):
  path = tmp_path / 'd.tsv'
  path.write_text('a\tyes\nb\tno\n')
  forget.append('jp_text_metrics')
  task = custom.register_file_task('jp_text_metrics', validation=str(path), label_set=['no', 'yes'],
                                   metrics=['accuracy', _score_metric, 'f1'], vocabulary=vocabulary)
  made = task.as_seqio()
  assert task.predict_metric_fns == made.predict_metric_fns == [metrics.accuracy, metrics.f1_score_with_invalid]
  assert task.score_metric_fns == made.score_metric_fns == [_score_metric]
  assert task.metric_fns == made.metric_fns and task.predict_with_aux_metric_fns == []
  assert task.postprocess_fn(' yes ', example={}, is_target=False) == made.postprocess_fn(
      ' yes ', example={}, is_target=False) == 1
  odd = text_tasks.TextTask('jp_odd', ('validation',), lambda split: iter(()), vocabulary, metrics=(lambda x: x,))
  with pytest.raises(ValueError, match=r"task 'jp_odd': a metric fn takes \('x',\)"):
    odd.predict_metric_fns  # pylint: disable=pointless-statement


@pytest.fixture(scope='module')
def tiny_fns():
  config = get_config('t5x_tiny')
  network = build_model(config).init_params(jax.random.PRNGKey(0))
  return evaluation.ModelFns(build_runtime(config, None, None, LENGTHS, network=network))


@pytest.mark.parametrize('rank_classification', [True, False])
def test_eval_through_the_text_task_equals_the_seqio_path(tiny_task, tiny_fns, rank_classification):
  results = [
      evaluation.evaluate_provider(tiny_fns, None, provider, 'validation', LENGTHS, 4,
                                   rank_classification=rank_classification)
      for provider in (tiny_task, tiny_task.as_seqio())
  ]
  assert results[0] == results[1]
  metrics_, records = results[0]
  assert metrics_['num_examples'] == 12 and 'accuracy' in metrics_ and len(records) == 12


def test_seqio_registry_follows_the_text_registry(tmp_path, vocabulary, forget):
  path = tmp_path / 'a.tsv'
  path.write_text('a\tyes\n')
  forget.append('jp_text_mirror')
  first = custom.register_file_task('jp_text_mirror', train=str(path), vocabulary=vocabulary)
  assert seqio.get_mixture_or_task('jp_text_mirror') is first.as_seqio()  # seqio is loaded: entered at once
  assert pipeline.get_provider('jp_text_mirror') is first.as_seqio()  # training streams its seqio Task
  assert pipeline.get_provider('jp_text_mirror', streams=False) is first  # eval reads the text task
  other = tmp_path / 'b.tsv'
  other.write_text('b\tno\nc\tyes\n')
  second = custom.register_file_task('jp_text_mirror', train=str(other), vocabulary=vocabulary, overwrite=True)
  assert tasks.get_task('jp_text_mirror') is second.as_seqio() is not first.as_seqio()
  assert [ex['targets_pretokenized'] for ex in second.get_dataset(None, 'train', shuffle=False).as_numpy_iterator()
         ] == [b'no', b'yes']  # what the text task lacks, its seqio Task answers
  custom.unregister_file_task('jp_text_mirror')
  assert 'jp_text_mirror' not in seqio.TaskRegistry.names() and text_tasks.find('jp_text_mirror') is None


def test_the_demo_mixture_follows_a_new_vocabulary(vocabulary):
  mixture = tasks.get_task(demo_tasks.PRETRAIN_MIXTURE)
  shipped = pipeline.get_provider('demo_continue', streams=False)
  assert shipped.as_seqio() in mixture.tasks and pipeline.label_set('demo_heldout_topic') == list(
      demo_tasks.data.TOPIC_LABELS)
  try:
    demo_tasks.register_demo_tasks(vocabulary)
    mixture = tasks.get_task(demo_tasks.PRETRAIN_MIXTURE)
    task = tasks.get_task('demo_continue')
    assert task.output_features['targets'].vocabulary == vocabulary and task in mixture.tasks
    assert shipped.as_seqio() not in mixture.tasks
  finally:
    demo_tasks.register_demo_tasks()
