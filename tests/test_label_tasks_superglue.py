"""WSC, MultiRC and ReCoRD as label ids (`data/label_tasks.py`, `data/superglue_groups.py`): the real TFDS builders
prepared offline from raw files the test writes (the releases' jsonl layout, as test_label_tasks.py does), read
into rows equal to the model's tokenizer on P-tuning v2's templates (texts and order), mixed with other label tasks,
and scored per group with T5's metric fns (checked against hand-computed values)."""
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position
import tokenizers  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxprompt.data import converters, encoder, label_files, label_tasks, metrics, pipeline, superglue_groups, tasks
from jaxprompt.data.hf_vocab import HfVocabulary  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxprompt.errors import DataError  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxprompt.models.features import CLASS_LABEL  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.hf_tokenizers import bert_folder  # pylint: disable=g-import-not-at-top,wrong-import-position

LENGTH = 128  # no row is cut (the tiny WordPiece splits words into pieces)
WSC = {  # (text, span1 index, span1, span2 index, span2, label)
    'train': [('Tom thanked Bob because he helped.', 0, 'Tom', 4, 'he', False)],
    'val': [('Ann hugged Eve because she was sad.', 2, 'Eve', 4, 'she', True),
            ('Ann hugged Eve because she was sad.', 0, 'Ann', 4, 'she', False)],
    'test': [('The cat chased the dog because it was fast.', 1, 'cat', 6, 'it', None)],
}
# A paragraph's questions, each with its answers (text, label); question and answer idx run over the split.
MULTIRC = {
    'train': [('The fox ran home.', [('Where did the fox run?', [('home', 1), ('away', 0)])])],
    'val': [('Ann has a red car and a blue bike.', [('What is red?', [('the car', 1), ('the bike', 0)]),
                                                    ('What does Ann have?', [('a car', 1), ('a bike', 1)])]),
            ('Bob is tall.', [('Who is tall?', [('Bob', 1), ('Ann', 0), ('nobody', 0)])])],
    'test': [('It rains.', [('What happens?', [('rain', None)])])],
}
# A passage (its entities in the text) and its queries, each with its answers (empty on the test split).
RECORD = {
    'train': [('Ann met Bob in Rome.\n@highlight\nBob left', ['Ann', 'Bob', 'Rome'], [('@placeholder was in Rome.',
                                                                                       ['Ann', 'Bob'])])],
    'val': [('Eve saw Tom at the Louvre Museum.\n@highlight\nTom waved', ['Eve', 'Tom', 'Louvre Museum'],
             [('@placeholder waved at Eve.', ['Tom']), ('Eve visited @placeholder.', ['Louvre Museum', 'Louvre'])])],
    'test': [('Max ran.', ['Max'], [('@placeholder ran fast.', [])])],
}
BUILDERS = ('super_glue/wsc:1.0.2', 'super_glue/multirc:1.0.2', 'super_glue/record:1.0.2')


def _jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def _span(text, word):
  start = text.index(word)
  return {'start': start, 'end': start + len(word) - 1, 'text': word}  # ReCoRD's ends are inclusive


def write_raw(folder):
  """The three releases' jsonl files, as WSC.zip / MultiRC.zip / ReCoRD.zip unpack."""
  for split, rows in WSC.items():
    _jsonl(folder / 'WSC' / f'{split}.jsonl', [{
        'text': t, 'idx': i, 'target': {'span1_index': i1, 'span1_text': s1, 'span2_index': i2, 'span2_text': s2},
        **({} if y is None else {'label': y})
    } for i, (t, i1, s1, i2, s2, y) in enumerate(rows)])
  for split, rows in MULTIRC.items():
    q = a = 0
    out = []
    for p, (text, questions) in enumerate(rows):
      qs = []
      for question, answers in questions:
        qs.append({'question': question, 'idx': q, 'answers': []})
        for answer, label in answers:
          qs[-1]['answers'].append({'text': answer, 'idx': a, **({} if label is None else {'label': label})})
          a += 1
        q += 1
      out.append({'idx': p, 'passage': {'text': text, 'questions': qs}})
    _jsonl(folder / 'MultiRC' / f'{split}.jsonl', out)
  for split, rows in RECORD.items():
    q = 0
    out = []
    for p, (text, entities, queries) in enumerate(rows):
      qas = []
      for query, answers in queries:
        qas.append({'query': query, 'idx': q, **({'answers': [_span(text, w) for w in answers]} if answers else {})})
        q += 1
      out.append({'idx': p, 'passage': {'text': text, 'entities': [_span(text, e) for e in entities]}, 'qas': qas})
    _jsonl(folder / 'ReCoRD' / f'{split}.jsonl', out)


def prepared(tmp_path_factory) -> str:
  """The three builders prepared once per session (a folder every test module using them shares)."""
  data = tmp_path_factory.getbasetemp() / 'superglue_groups_tfds'
  if not (data / 'ready').exists():
    raw = tmp_path_factory.mktemp('superglue_groups_raw')
    write_raw(raw)
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(tfds.download.DownloadManager, 'download_and_extract', lambda self, url: str(raw))
      mp.setattr(tfds.download.DownloadManager, 'download', lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
      config = tfds.download.DownloadConfig(try_download_gcs=False)
      for name in BUILDERS:
        tfds.builder(name, data_dir=str(data)).download_and_prepare(download_config=config)
    (data / 'ready').write_text('')
  return str(data)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  tasks.set_tfds_data_dir(prepared(tmp_path_factory))
  yield
  tasks.set_tfds_data_dir(None)


@pytest.fixture(scope='module')
def bert(tmp_path_factory):
  """(vocabulary, the folder's tokenizer padding to LENGTH, the layout). The rows' layout and cut are checked
  against transformers in test_label_tasks.py; here the templates: which texts, in which order."""
  folder = bert_folder(tmp_path_factory.mktemp('bert'))
  vocabulary = HfVocabulary(str(folder))
  hf = tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))
  hf.enable_padding(pad_id=vocabulary.pad_id, length=LENGTH)
  return vocabulary, hf, encoder.EncoderTokens.of(vocabulary)


def _read(name, split, bert):
  vocabulary, _, tokens = bert
  task = pipeline.get_provider(name, vocabulary, converters.ENCODER_ONLY)
  examples, _ = pipeline.read_examples(task, None, split)
  return examples, encoder.example_features(examples, {'inputs': LENGTH}, tokens)


def _expected(bert, pairs):
  return [bert[1].encode(a, b).ids for a, b in pairs]


def test_rows_follow_p_tuning_v2s_templates_with_their_groups(data_dir, bert):
  del data_dir
  examples, rows = _read('super_glue_wsc_v102_labels', 'validation', bert)
  assert rows['encoder_input_tokens'].tolist() == _expected(bert,
                                                            [(f'{s2}: {t}', s1) for t, _, s1, _, s2, _ in WSC['val']])
  assert rows[CLASS_LABEL].tolist() == [1, 0] and superglue_groups.GROUP not in examples[0]

  examples, rows = _read('super_glue_multirc_v102_labels', 'validation', bert)
  questions = [(p, q, answers) for p, qs in MULTIRC['val'] for q, answers in qs]  # list index = the question's idx
  texts = [(p, f'{q} {a}', y, i) for i, (p, q, answers) in enumerate(questions) for a, y in answers]
  want = sorted(zip(_expected(bert, [t[:2] for t in texts]), [t[2] for t in texts], [t[3] for t in texts]))
  groups = [superglue_groups.RowGroup.of(ex).group for ex in examples]  # the row's question: T5's group
  assert sorted(zip(rows['encoder_input_tokens'].tolist(), rows[CLASS_LABEL].tolist(), groups)) == want

  examples, rows = _read('super_glue_record_v102_labels', 'validation', bert)
  text, entities, queries = RECORD['val'][0]
  passage = text.replace('@highlight\n', '- ')
  want = sorted((ids, int(e in answers)) for query, answers in queries for e, ids in zip(
      sorted(entities), _expected(bert, [(passage, query.replace('@placeholder', e)) for e in sorted(entities)])))
  assert sorted(zip(rows['encoder_input_tokens'].tolist(), rows[CLASS_LABEL].tolist())) == want
  got = {(g.group, g.entity): g.answers for g in map(superglue_groups.RowGroup.of, examples)}
  assert len({q for q, _ in got}) == 2 and set(got.values()) == {('Tom',), ('Louvre', 'Louvre Museum')}
  examples, rows = _read('super_glue_record_v102_labels', 'test', bert)
  assert rows[CLASS_LABEL].tolist() == [-1] and superglue_groups.RowGroup.of(examples[0]).answers == ()


def test_grouped_tasks_mix_with_the_others(data_dir, bert, tmp_path):
  del data_dir
  vocabulary, _, _ = bert
  (tmp_path / 'pairs.tsv').write_text('text\tpair\tlabel\nA fox.\tA dog.\tyes\n')
  label_files.register_label_file_task('jp_sg_pairs', train=str(tmp_path / 'pairs.tsv'), pair_field='pair',
                                       label_set=('no', 'yes'))
  names = ['super_glue_multirc_v102_labels', 'super_glue_record_v102_labels', 'jp_sg_pairs']
  label_tasks.register_mixture('jp_grouped_mixture', [(n, 1.0) for n in names])
  provider = pipeline.get_provider('jp_grouped_mixture', vocabulary, converters.ENCODER_ONLY)
  ds = pipeline.mixed_task_stream(provider, {'inputs': LENGTH}, 'train', 0, names)
  shared = {'inputs', 'inputs_pair', 'is_pair', 'label', 'label_value', 'task_ids'}
  # sample_from_datasets took the three streams (it refuses streams of different structures), the groups left out:
  # one structure, every other label task's (not iterated: its shuffle buffers would read each task 1000 times)
  assert set(ds.element_spec) == shared


def test_grouped_scores_are_t5s_metrics_on_hand_counted_groups():
  multirc = label_tasks.get('super_glue_multirc_v102_labels')
  groups = [superglue_groups.RowGroup(g) for g in (0, 0, 1, 1, 2, 2, 2, 9)]
  targets, predictions = [1, 0, 1, 1, 1, 0, 0, -1], [1, 0, 1, 0, 1, 1, 0, 1]
  got = multirc.score(targets, predictions, np.zeros((8, 2)), groups)
  # question 0 all right, 1 and 2 one answer wrong: EM 1/3; answers: TP 3, 4 true, 4 predicted: F1 3/4
  assert got == {'exact_match': pytest.approx(100 / 3), 'f1': pytest.approx(75.0)}
  gold = [{'value': t, 'group': g.group} for t, g in zip(targets[:-1], groups)]
  predicted = [{'value': p} for p in predictions[:-1]]
  assert got == {
      **metrics.multirc_f1_over_all_answers(gold, predicted),
      **metrics.mean_group_metric(metrics.all_match)(gold, predicted)
  }

  record = label_tasks.get('super_glue_record_v102_labels')
  answers = ('Louvre Museum', 'Louvre')
  rows = [(0, 'Eve', ('Tom',)), (0, 'Tom', ('Tom',)), (1, 'Eve', answers), (1, 'the Louvre', answers), (2, 'Max', ())]
  groups = [superglue_groups.RowGroup(*r) for r in rows]
  # query 0: Tom's True logit 1.0 tops Eve's 0.5, though Eve is the more probably True (sigmoid(0.5 - -3) against
  # sigmoid(1 - 2)): THUDM ranks rows by the raw logit; query 1: a tie at 0.2 goes to the entity last in string
  # order, 'the Louvre' (EM 1 after SQuAD drops articles), as THUDM's reverse sort of (logit, entity) does;
  # query 2 has no answers: unscored
  logits = np.array([[-3.0, 0.5], [2.0, 1.0], [1.0, 0.2], [0.5, 0.2], [0.0, 9.0]])
  predictions = list(logits.argmax(-1))
  got = record.score([0, 1, 0, 0, -1], predictions, logits, groups)
  assert got == {'em': pytest.approx(100.0), 'f1': pytest.approx(100.0)}
  assert got == metrics.squad([['Tom'], list(answers)], ['Tom', 'the Louvre'])
  thudm = {q: sorted((row[1], g.entity) for row, g in zip(logits, groups) if g.group == q)[-1][1] for q in (0, 1, 2)}
  assert superglue_groups.record_picks(superglue_groups.true_logits(logits),
                                       groups) == thudm == {0: 'Tom', 1: 'the Louvre', 2: 'Max'}
  half = record.score([0, 1], [1, 0], np.array([[0.0, 1.0], [0.0, 0.5]]), groups[:2])  # Eve picked: EM 0, F1 0
  assert half == {'em': 0.0, 'f1': 0.0}
  with pytest.raises(DataError, match=r'True logit: got logits of shape \(2,\)'):
    record.score([0, 1], [1, 0], np.array([0.9, 0.9]), groups[:2])
  with pytest.raises(DataError, match='no labelled example'):
    record.score([-1], [1], np.array([[0.0, 0.9]]), groups[4:])
  with pytest.raises(DataError, match="'super_glue_multirc_v102_labels' is scored per group of rows"):
    multirc.score([1], [1])
  wsc = label_tasks.get('super_glue_wsc.fixed_v102_labels')
  assert wsc.score([1, 0, -1], [1, 1, 0]) == {'accuracy': 50.0} and wsc.tfds_name == 'super_glue/wsc.fixed:1.0.2'
  raw = {'text': 'Ann hugged Eve because she was sad.', 'span1_text': 'Eve', 'span2_text': 'she', 'label': 1}
  row = next(wsc.rows(tf.data.Dataset.from_tensors(raw)).as_numpy_iterator())  # the fixed spans, WSC's template
  assert (row['inputs'], row['inputs_pair'], row['label']) == (b'she: Ann hugged Eve because she was sad.', b'Eve', 1)
