"""`--task` specs of encoder-only tasks (`data/task_spec.py`): label files (classification with its labels read from
the training file, regression, multiple choice) and CoNLL tagging directories, each registered from its spec alone;
a malformed spec is one error naming the key."""
import pytest

from jaxprompt.data import label_tasks, tagging_tasks, task_spec, tasks
from jaxprompt.errors import ConfigError, DataError

NLI = ('premise\thypothesis\tlabel\nA fox jumps.\tA fox moves.\tyes\nA dog sleeps.\tA dog runs.\tno\n'
       'It rains.\tIt is wet.\tyes\n')
CHOICES = ('{"premise": "The man fell.", "c0": "He slipped.", "c1": "He sang.", "answer": 0}\n'
           '{"premise": "It rained.", "c0": "The sun shone.", "c1": "The street got wet.", "answer": "1"}\n')
CONLL = 'Peter\tB-PER\nvisits\tO\nParis\tB-LOC\n\nThe\tO\nfox\tO\n'


def test_label_specs_parse_to_the_label_file_arguments():
  assert task_spec.parse_task_spec('name=my_nli,kind=classification,train=/d/t.tsv,text=premise,pair=hypothesis,'
                                   'label=gold,labels=no|yes,header=true') == {
                                       'name': 'my_nli', 'kind': 'classification', 'train': '/d/t.tsv',
                                       'text_field': 'premise', 'pair_field': 'hypothesis', 'label_field': 'gold',
                                       'label_set': ('no', 'yes'), 'has_header': True
                                   }
  assert task_spec.parse_task_spec('name=c,kind=choice,validation=/v.jsonl,choices=a|b|c') == {
      'name': 'c', 'kind': 'choice', 'validation': '/v.jsonl', 'choice_fields': ('a', 'b', 'c')
  }
  assert task_spec.parse_task_spec('name=ner,conll=/data/ner') == {
      'name': 'ner', 'kind': 'tagging', 'directory': '/data/ner'
  }
  assert task_spec.parse_task_spec('name=ner,kind=tagging,train=/a.conll,tags=O|B-X') == {
      'name': 'ner', 'kind': 'tagging', 'train': '/a.conll', 'labels': ('O', 'B-X')
  }


@pytest.mark.parametrize('spec, message', [
    ('name=t,kind=sentiment,train=/a.tsv', r"kind='sentiment' is not one of \['text', 'classification'"),
    ('name=t,train=/a.tsv,pair=h', r"key 'pair' is for kind=classification/regression, not kind='text'"),
    ('name=t,kind=regression,train=/a.tsv,labels=a|b', r"key 'labels' is for kind=text/classification/tagging"),
    ('name=t,conll=/d,vocab=/v', r"key 'vocab' is for kind=text, not kind='tagging'"),
    ('name=t,kind=choice,choices=a||b', r"choices='a\|\|b' has an empty entry"),
    ('name=t,conll=/d,train=/a|/b', r"train='/a\|/b': a tagging split is one CoNLL file"),
    ('name=t,kind=tagging,colour=red', r"unknown key 'colour' for kind='tagging'"),
    ('name=t,train=/a,train=/b', r"key 'train' is given twice"),
])
def test_malformed_specs_name_the_key(spec, message):
  with pytest.raises(ConfigError, match=message):
    task_spec.parse_task_spec(spec)


def test_classification_takes_its_labels_from_the_training_file(tmp_path):
  (tmp_path / 'train.tsv').write_text(NLI)
  (tmp_path / 'dev.tsv').write_text('premise\thypothesis\tlabel\nA cat.\tAn animal.\tmaybe\n')
  spec = f'name=spec_nli,kind=classification,train={tmp_path}/train.tsv,text=premise,pair=hypothesis'
  task = task_spec.register_task_spec(spec)
  assert task.kind == label_tasks.CLASSIFICATION and task.label_names == ('no', 'yes')
  assert task.fields == ('premise', 'hypothesis') and tasks.get_label_set('spec_nli') == ['no', 'yes']
  with pytest.raises(DataError, match=r"dev.tsv:2: target 'maybe' is not in the label set \['no', 'yes'\]"):
    task_spec.register_task_spec(spec + f',validation={tmp_path}/dev.tsv')
  with pytest.raises(ConfigError, match='without a training file, give its label set'):
    task_spec.register_task_spec(f'name=spec_nli,kind=classification,validation={tmp_path}/train.tsv,text=premise')
  (tmp_path / 'scores.tsv').write_text('9\t3\n10\t1\n2\t2\n')  # no header: text<TAB>label, labels sorted as numbers
  assert task_spec.register_task_spec(f'name=spec_num,kind=classification,train={tmp_path}/scores.tsv,'
                                      'header=false').label_names == ('1', '2', '3')


def test_multiple_choice_reads_each_choice_and_the_right_ones_index(tmp_path):
  (tmp_path / 'copa.jsonl').write_text(CHOICES)
  task = task_spec.register_task_spec(
      f'name=spec_choice,kind=choice,train={tmp_path}/copa.jsonl,text=premise,choices=c0|c1,label=answer')
  assert task.kind == label_tasks.CHOICE and task.label_names == ('c0', 'c1')
  rows = list(task_rows('spec_choice'))
  assert [(r['inputs'], r['choice_0'], r['choice_1'], int(r['label'])) for r in rows
         ] == [(b'The man fell.', b'He slipped.', b'He sang.', 0),
               (b'It rained.', b'The sun shone.', b'The street got wet.', 1)]
  (tmp_path / 'bad.jsonl').write_text(CHOICES.replace('"answer": 0', '"answer": 2'))
  with pytest.raises(DataError, match=r"example 1 has the label '2', not the index of one of its 2 choices"):
    task_spec.register_task_spec(f'name=spec_bad,kind=choice,train={tmp_path}/bad.jsonl,text=premise,choices=c0|c1,'
                                 'label=answer')


def task_rows(name):
  """The raw examples of a label task's train split (strings and label, before tokenizing)."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.get_mixture_or_task(name).source.get_dataset('train', shuffle=False).as_numpy_iterator()


def test_tagging_from_a_conll_directory_and_config_paths_made_absolute(tmp_path, monkeypatch):
  (tmp_path / 'ner').mkdir()
  (tmp_path / 'ner' / 'train.txt').write_text(CONLL)
  (tmp_path / 'ner' / 'dev.conll').write_text('Anna\tB-PER\n')
  monkeypatch.chdir(tmp_path)
  spec = task_spec.absolute_spec('name=spec_ner,conll=ner')
  assert spec == f'name=spec_ner,conll={tmp_path}/ner'
  task = task_spec.register_task_spec(spec)
  assert tagging_tasks.get('spec_ner') is task and task.splits == ('train', 'validation')
  assert task.labels == ('O', 'B-LOC', 'B-PER')
  with pytest.raises(DataError, match='is not a directory'):
    task_spec.register_task_spec(f'name=spec_ner,conll={tmp_path}/missing')
