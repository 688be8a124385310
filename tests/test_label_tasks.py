"""GLUE / SuperGLUE as label ids (`data/label_tasks.py`): every task against its real TFDS builder's features, and
the real builders prepared offline from raw files the test writes (the layout of test_data_tfds_offline.py), read
end to end into encoder rows equal to transformers' tokenizer."""
import itertools
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxprompt.data import converters, encoder, label_tasks, pipeline, tasks  # pylint: disable=g-import-not-at-top
from jaxprompt.data.hf_vocab import HfVocabulary  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxprompt.errors import DataError  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxprompt.models.features import CLASS_LABEL, REGRESSION_LABEL  # pylint: disable=g-import-not-at-top
from tests.hf_tokenizers import bert_folder  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.test_data_tfds_offline import CB, SST2, _write_raw  # pylint: disable=g-import-not-at-top

LENGTH = 24
STSB = {
    'train': [('A man plays.', 'A man is playing.', 4.8)], 'dev': [('A cat.', 'The dog runs fast.', 0.4),
                                                                   ('Rain falls.', 'It rains.', 3.9)],
    'test': [('One.', 'Two.', None)]
}
COPA = {
    'train': [('The fox jumped.', 'The dog was lazy.', 'The dog was quick.', 'cause', 0)], 'val': [
        ('The sky is blue.', 'It rained.', 'The sun is out.', 'effect', 1)
    ], 'test': [('The man left.', 'He was tired.', 'He was happy.', 'cause', None)]
}
# WSC, MultiRC and ReCoRD build their rows their own way: tests/test_label_tasks_superglue.py
SUPER_GLUE = [n for n in label_tasks.names() if n.startswith('super_glue_') and not label_tasks.get(n).rows]
GLUE = [n for n in label_tasks.names() if n.startswith('glue_') and '_v200_' in n]


@pytest.fixture(scope='module')
def bert(tmp_path_factory):
  folder = bert_folder(tmp_path_factory.mktemp('bert'))
  vocabulary = HfVocabulary(str(folder))
  return vocabulary, transformers.AutoTokenizer.from_pretrained(str(folder)), encoder.EncoderTokens.of(vocabulary)


def _rows(name, raw, vocabulary, tokens):
  """A retokenized label task's examples of `raw` (a tf.data of raw builder examples) as encoder features."""
  task = pipeline.get_provider(name, vocabulary, converters.ENCODER_ONLY)
  ds = task.preprocess_postcache(task.preprocess_precache(raw), sequence_length=None)
  return list(
      converters.get(converters.ENCODER_ONLY).convert(ds, {'inputs': LENGTH}, False, 0, tokens,
                                                      None).as_numpy_iterator())


def _expected(hf, texts):
  return hf(*texts, truncation=True, max_length=LENGTH, padding='max_length')['input_ids']


@pytest.mark.parametrize('name', GLUE + SUPER_GLUE)
def test_every_label_task_reads_its_builders_features(name, bert, tmp_path_factory):
  vocabulary, hf, tokens = bert
  spec = label_tasks.get(name)
  features = tfds.builder(spec.tfds_name, data_dir=str(tmp_path_factory.getbasetemp())).info.features
  label = features['label']
  if spec.kind == label_tasks.REGRESSION:
    assert spec.label_names is None and label.dtype == tf.float32
  else:
    assert spec.label_names == tuple(label.names) and tasks.get_label_set(name) == list(label.names)
  raw = {k: 'fox dog' if f.dtype == tf.string else 0 for k, f in features.items()}
  raw.update(label=np.float32(2.5) if spec.kind == label_tasks.REGRESSION else 1, question='effect', word='fox')
  raw.update({f: f'the {f} text' for f in spec.fields if f != 'word'})
  rows = _rows(name, tf.data.Dataset.from_tensors(raw), vocabulary, tokens)
  assert len(rows) == 1
  row = rows[0]
  if spec.kind == label_tasks.CHOICE:  # COPA: [choices, length]
    assert row['encoder_input_tokens'].shape == (2, LENGTH) and row[CLASS_LABEL] == 1
    assert row['encoder_input_tokens'][1].tolist() == _expected(hf, ('fox dog', 'so the choice2 text'))
    return
  texts = [raw[f] for f in spec.fields]
  if spec.fields[0] == 'word':  # WiC: "<word>: <sentence1>", <sentence2>
    texts[0] = f'fox: {raw["sentence1"]}'
  assert row['encoder_input_tokens'].tolist() == _expected(hf, texts)
  assert (row[REGRESSION_LABEL] == np.float32(2.5)) if spec.kind == label_tasks.REGRESSION else row[CLASS_LABEL] == 1


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  raw, data = tmp_path_factory.mktemp('raw'), tmp_path_factory.mktemp('tfds')
  _write_raw(raw)
  os.makedirs(raw / 'STS-B')
  for split, rows in STSB.items():
    header = 'sentence1\tsentence2' + ('' if split == 'test' else '\tscore')  # GLUE's test files have no score
    (raw / 'STS-B' /
     f'{split}.tsv').write_text(header + '\n' +
                                ''.join(f'{a}\t{b}' + ('' if y is None else f'\t{y}') + '\n' for a, b, y in rows))
  os.makedirs(raw / 'COPA')
  for split, rows in COPA.items():
    with open(raw / 'COPA' / f'{split}.jsonl', 'w') as f:
      for i, (premise, c1, c2, question, label) in enumerate(rows):
        row = {'premise': premise, 'choice1': c1, 'choice2': c2, 'question': question, 'idx': i}
        f.write(json.dumps(row if label is None else dict(row, label=label)) + '\n')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tfds.download.DownloadManager, 'download_and_extract', lambda self, url: str(raw))
    mp.setattr(tfds.download.DownloadManager, 'download', lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for name in ('glue/sst2:2.0.0', 'super_glue/cb:1.0.2', 'glue/stsb:2.0.0', 'super_glue/copa:1.0.2'):
      tfds.builder(name, data_dir=str(data)).download_and_prepare(download_config=config)
    tasks.set_tfds_data_dir(str(data))
    yield str(data)
    tasks.set_tfds_data_dir(None)


def _read(name, split, vocabulary, tokens):
  task = pipeline.get_provider(name, vocabulary, converters.ENCODER_ONLY)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  return list(
      converters.get(converters.ENCODER_ONLY).convert(ds, {'inputs': LENGTH}, False, 0, tokens,
                                                      None).as_numpy_iterator())


def test_prepared_builders_read_into_rows_and_labels(data_dir, bert):
  del data_dir
  vocabulary, hf, tokens = bert
  sst2 = _read('glue_sst2_v200_labels', 'validation', vocabulary, tokens)
  assert sorted((r['encoder_input_tokens'].tolist(), int(r[CLASS_LABEL])) for r in sst2) == sorted(
      (_expected(hf, (s,)), y) for s, y in SST2['dev'])
  cb = _read('super_glue_cb_v102_labels', 'train', vocabulary, tokens)
  names = label_tasks.get('super_glue_cb_v102_labels').label_names
  assert sorted((r['encoder_input_tokens'].tolist(), names[r[CLASS_LABEL]]) for r in cb) == sorted(
      (_expected(hf, (p, h)), y) for p, h, y in CB['train'])
  assert [int(r[CLASS_LABEL]) for r in _read('super_glue_cb_v102_labels', 'test', vocabulary, tokens)] == [-1]
  stsb = _read('glue_stsb_v200_labels', 'validation', vocabulary, tokens)
  assert sorted((r['encoder_input_tokens'].tolist(), float(r[REGRESSION_LABEL])) for r in stsb) == sorted(
      (_expected(hf, (a, b)), pytest.approx(y)) for a, b, y in STSB['dev'])
  assert all(r[REGRESSION_LABEL].dtype == np.float32 for r in stsb)
  (copa,) = _read('super_glue_copa_v102_labels', 'validation', vocabulary, tokens)
  premise, c1, c2, _, label = COPA['val'][0]
  assert copa['encoder_input_tokens'].tolist() == [_expected(hf, (premise, f'so {c}')) for c in (c1, c2)]
  assert copa[CLASS_LABEL] == label and copa['encoder_token_types'].shape == (2, LENGTH)


def test_metrics_on_label_ids_skip_unlabelled_rows():
  cola = label_tasks.get('glue_cola_v200_labels')
  assert cola.score([1, 0, 1, 0, -1], [1, 0, 1, 0, 1]) == {'matthews_corrcoef': pytest.approx(100.0)}
  mrpc = label_tasks.get('glue_mrpc_v200_labels').score([1, 1, 0, 0], [1, 0, 0, 0])
  assert mrpc == {'f1': pytest.approx(100 * 2 / 3), 'accuracy': pytest.approx(75.0)}
  stsb = label_tasks.get('glue_stsb_v200_labels').score([0.5, 2.0, 4.5], [1.0, 2.5, 5.0])
  assert stsb == {'pearson_corrcoef': pytest.approx(100.0), 'spearman_corrcoef': pytest.approx(100.0)}
  cb = label_tasks.get('super_glue_cb_v102_labels').score([0, 1, 2, 2], [0, 1, 2, 1])
  assert cb['accuracy'] == pytest.approx(75.0) and cb['mean_3class_f1'] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
  with pytest.raises(DataError, match='no labelled example'):
    cola.score([-1, -1], [0, 1])
  with pytest.raises(DataError, match=r"'glue_sst2_labels' is not a label task"):
    label_tasks.get('glue_sst2_labels')


def test_own_label_files_pairs_and_regression(tmp_path, bert):
  from jaxprompt.data.label_files import register_label_file_task  # pylint: disable=g-import-not-at-top
  vocabulary, hf, tokens = bert
  (tmp_path / 'train.tsv').write_text('id\tpremise\thypothesis\tlabel\n1\tThe fox jumps.\tA fox moves.\tyes\n'
                                      '2\tThe dog sleeps.\tThe dog runs.\tno\n')
  spec = register_label_file_task('my_nli', train=str(tmp_path / 'train.tsv'), text_field='premise',
                                  pair_field='hypothesis', label_set=('no', 'yes'))
  assert spec.kind == label_tasks.CLASSIFICATION and tasks.get_label_set('my_nli') == ['no', 'yes']
  rows = _read('my_nli', 'train', vocabulary, tokens)
  assert [(r['encoder_input_tokens'].tolist(), int(r[CLASS_LABEL])) for r in rows
         ] == [(_expected(hf, ('The fox jumps.', 'A fox moves.')), 1),
               (_expected(hf, ('The dog sleeps.', 'The dog runs.')), 0)]
  assert spec.score([1, 0], [1, 1]) == {'accuracy': 50.0}
  (tmp_path / 'scores.jsonl').write_text('{"text": "great fun", "label": 4.5}\n{"text": "dull", "label": "0.5"}\n')
  spec = register_label_file_task('my_scores', validation=str(tmp_path / 'scores.jsonl'))
  rows = _read('my_scores', 'validation', vocabulary, tokens)
  assert [float(r[REGRESSION_LABEL]) for r in rows] == [4.5, 0.5] and spec.kind == label_tasks.REGRESSION
  assert sorted(spec.score([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])) == ['pearson_corrcoef', 'spearman_corrcoef']
  (tmp_path / 'bad.jsonl').write_text('{"text": "great fun", "label": "high"}\n')
  with pytest.raises(DataError, match=r"example 1 has the label 'high', not a number"):
    register_label_file_task('bad', train=str(tmp_path / 'bad.jsonl'))
  with pytest.raises(DataError, match=r"train.tsv:3: target 'no' is not in the label set \['yes'\]"):
    register_label_file_task('bad', train=str(tmp_path / 'train.tsv'), text_field='premise', label_set=('yes',))


@pytest.mark.parametrize('name,split', [('glue_stsb_v200_labels', 'validation'),
                                        ('super_glue_copa_v102_labels', 'train')])
def test_a_split_read_once_gives_the_streams_rows(data_dir, bert, name, split):
  del data_dir
  vocabulary, _, tokens = bert
  task = pipeline.get_provider(name, vocabulary, converters.ENCODER_ONLY)
  examples, counted = pipeline.read_examples(task, None, split)
  assert counted is None  # uncut: the rows are cut and counted once, by example_features
  got = encoder.example_features(examples, {'inputs': LENGTH}, tokens, where=f'{name} {split}')
  streamed = _read(name, split, vocabulary, tokens)
  for key, value in got.items():
    np.testing.assert_array_equal(value, np.stack([r[key] for r in streamed]), err_msg=key)


@pytest.mark.slow
def test_a_mixture_of_single_pair_and_regression_tasks_streams_each_tasks_rows(data_dir, bert):
  del data_dir
  vocabulary, _, tokens = bert
  names = ['glue_sst2_v200_labels', 'super_glue_cb_v102_labels', 'glue_stsb_v200_labels']
  label_tasks.register_mixture('jp_label_mixture', [(n, 1.0) for n in names])
  provider = pipeline.get_provider('jp_label_mixture', vocabulary, converters.ENCODER_ONLY)
  ds = pipeline.train_dataset(provider, {'inputs': LENGTH}, 'train', 8, seed=0, task_names=names,
                              family=converters.ENCODER_ONLY)
  batches = list(itertools.islice(pipeline.train_batches(ds, family=converters.ENCODER_ONLY), 3))
  alone = {
      i: {r['encoder_input_tokens'].tobytes(): r for r in _read(n, 'train', vocabulary, tokens)}
      for i, n in enumerate(names)
  }
  seen = set()
  for batch in batches:
    assert set(batch) == {
        'encoder_input_tokens', 'encoder_input_mask', 'encoder_token_types', CLASS_LABEL, REGRESSION_LABEL, 'task_ids'
    }
    assert batch[CLASS_LABEL].dtype == np.int32 and batch[REGRESSION_LABEL].dtype == np.float32
    for i, task in enumerate(batch['task_ids'].tolist()):
      want = alone[task][batch['encoder_input_tokens'][i].tobytes()]  # the row its task makes alone
      for key, value in want.items():
        np.testing.assert_array_equal(batch[key][i], value, err_msg=f'{names[task]} {key}')
      seen.add(task)
  assert seen == {0, 1, 2}
  assert {int(r[CLASS_LABEL]) for r in alone[2].values()} == {-1}  # STS-B's rows: no class
  assert {float(r[REGRESSION_LABEL]) for t in (0, 1) for r in alone[t].values()} == {0.0}  # the classes': no value
  with pytest.raises(
      DataError, match=r"multiple-choice task 'super_glue_copa_v102_labels' cannot mix with "
      r"\['glue_sst2_v200_labels'\]"):
    label_tasks.register_mixture('jp_bad_mixture', [('glue_sst2_v200_labels', 1), ('super_glue_copa_v102_labels', 1)])
