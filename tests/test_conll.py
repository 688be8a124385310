"""CoNLL tagging files (`data/conll.py`) and sub-word label alignment (`data/token_labels.py`) against transformers'
fast tokenizers' `word_ids()` for tiny BERT and RoBERTa tokenizers built in the test."""
import logging

import numpy as np
import pytest

from jaxprompt.data.conll import Sentence, read_conll, tag_list
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.data.token_labels import TagAligner
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import IGNORE_LABEL, TAGGING_FEATURES
from tests.hf_tokenizers import bert_folder, roberta_folder

TAB_FILE = 'EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall\tO\n\n\nPeter\tB-PER\nBlackburn\tI-PER\n'
CONLL_2003 = ('-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n'
              'Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n')
SENTENCES = [
    Sentence(('The', 'quick', 'brownish', 'fox', 'jumps'), ('B-PER', 'I-PER', 'O', 'B-LOC', 'O')),
    Sentence(('naïve', 'café', '\U0001f642', 'zyx', 'qqqq', '\u200b', '.'),
             ('S-ORG', 'O', 'B-LOC', 'E-LOC', 'I-PER', 'O', 'O')),
    Sentence(('Prompt',), ('O',)),
]


def _write(tmp_path, text, name='data.conll'):
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return str(path)


def test_reads_tab_and_conll_2003_layouts(tmp_path):
  tab = read_conll(_write(tmp_path, TAB_FILE, 'tab.tsv'))
  assert [(s.words, s.tags, s.line) for s in tab] == [(('EU', 'rejects', 'German', 'call'), ('B-ORG', 'O', 'B-MISC',
                                                                                             'O'), 1),
                                                      (('Peter', 'Blackburn'), ('B-PER', 'I-PER'), 7)]
  spaced = read_conll(_write(tmp_path, CONLL_2003, 'eng.train'), labels=['O', 'I-ORG', 'I-MISC', 'I-PER'])
  assert [(s.words, s.tags) for s in spaced] == [(('EU', 'rejects', 'German'), ('I-ORG', 'O', 'I-MISC')),
                                                 (('Peter', 'Blackburn'), ('I-PER', 'I-PER'))]
  assert tag_list(tab + spaced) == ('O', 'B-MISC', 'I-MISC', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER')


@pytest.mark.parametrize('text,line,says', [
    ('EU\tB-ORG\nrejects\n', 2, 'one column'),
    ('EU NNP B-NP B-ORG\nrejects VBZ O\n', 2, '3 columns, but the file\'s first line has 4'),
    ('EU\tB-ORG\n\n\n\tO\n', 4, 'an empty word'),
    ('EU\tB-ORG\nrejects\tPER\n', 2, "tag 'PER' is neither O nor B-/I-/E-/S-"),
    ('EU\tB-ORG\nrejects\tX-PER\n', 2, "tag 'X-PER'"),
    ('EU\tB-ORG\n\nrejects\tB-LOC\n', 3, "tag 'B-LOC' is not in the label list"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, line, says):
  path = _write(tmp_path, text)
  with pytest.raises(DataError) as e:
    read_conll(path, labels=['O', 'B-ORG', 'I-ORG'])
  assert str(e.value).startswith(f'{path}:{line}: ') and says in str(e.value), str(e.value)
  assert '\n' not in str(e.value)


def test_bad_files_get_one_error(tmp_path):
  for path, says in ((_write(tmp_path, '\n-DOCSTART- -X- -X- O\n\n'), 'has no sentences'),
                     (str(tmp_path / 'missing.conll'), 'does not exist'), (str(tmp_path), 'is a directory')):
    with pytest.raises(DataError, match=says):
      read_conll(path)
  (tmp_path / 'latin1.conll').write_bytes('EU\tO\ncaf\xe9\tO\n'.encode('latin-1'))
  with pytest.raises(DataError, match=r'latin1.conll:2: not UTF-8'):
    read_conll(str(tmp_path / 'latin1.conll'))


@pytest.fixture(scope='module', params=[bert_folder, roberta_folder], ids=['bert', 'roberta'])
def tokenizers(request, tmp_path_factory):
  transformers = pytest.importorskip('transformers')
  folder = request.param(tmp_path_factory.mktemp(request.param.__name__))
  # add_prefix_space: what RoBERTa needs for pre-split words (transformers' run_ner.py); BERT ignores it.
  return HfVocabulary(folder), transformers.AutoTokenizer.from_pretrained(folder, add_prefix_space=True)


def test_alignment_is_transformers_word_ids(tokenizers):
  vocabulary, theirs = tokenizers
  labels = tag_list(SENTENCES)
  aligner = TagAligner(vocabulary, labels, 64)
  for sentence in SENTENCES:
    want = theirs(list(sentence.words), is_split_into_words=True)
    ours = aligner.align(sentence.words, sentence.tags)
    assert ours.tokens.tolist() == want['input_ids']
    assert ours.word_ids.tolist() == [-1 if w is None else w for w in want.word_ids()]
    # run_ner.py's rule: a word's label on its first token, -100 on the rest and on the specials.
    previous, expected = None, []
    for w in want.word_ids():
      expected.append(IGNORE_LABEL if w is None or w == previous else labels.index(sentence.tags[w]))
      previous = w
    assert ours.labels.tolist() == expected
    gold = [t if w in ours.word_ids else 'O' for w, t in enumerate(sentence.tags)]  # '\u200b' has no token
    assert aligner.word_tags(ours, np.where(ours.labels >= 0, ours.labels, 0)) == gold
  unlabeled = aligner.align(SENTENCES[0].words)  # inference: no tags
  assert (unlabeled.labels == IGNORE_LABEL).all()
  assert unlabeled.tokens.tolist() == aligner.align(SENTENCES[0].words, SENTENCES[0].tags).tokens.tolist()


def test_truncation_is_counted_and_cut_words_read_back_as_o(tokenizers, caplog):
  vocabulary, theirs = tokenizers
  aligner = TagAligner(vocabulary, tag_list(SENTENCES), 6)
  with caplog.at_level(logging.WARNING, logger='jaxprompt'):
    aligned, features, truncation = aligner.tagging_features(SENTENCES, split='dev.conll')
  full = [len(theirs(list(s.words), is_split_into_words=True)['input_ids']) for s in SENTENCES]
  assert [a.size for a in aligned] == full and (truncation.examples, truncation.truncated) == (3, 2)
  assert 'dev.conll: 2 of 3 examples were truncated' in caplog.text
  assert 'special tokens included' in caplog.text
  first = aligned[0]
  assert first.tokens[-1] == theirs(['x'], is_split_into_words=True)['input_ids'][-1]  # the closing special kept
  for row in features:
    assert set(row) == set(TAGGING_FEATURES) and all(v.shape == (6,) and v.dtype == np.int32 for v in row.values())
  short = features[2]
  real = int(short['encoder_input_mask'].sum())
  assert real == full[2] and (short['token_labels'][real:] == IGNORE_LABEL).all()
  kept = set(first.word_ids[first.word_ids >= 0].tolist())
  tags = aligner.word_tags(first, np.where(first.labels >= 0, first.labels, 0))
  assert tags == [t if w in kept else 'O' for w, t in enumerate(SENTENCES[0].tags)] and len(kept) < 5


def test_alignment_errors(tokenizers):
  vocabulary, _ = tokenizers
  with pytest.raises(ConfigError, match='tagging length 2 leaves no room'):
    TagAligner(vocabulary, ['O'], 2)
  aligner = TagAligner(vocabulary, ['O', 'B-PER'], 16)
  with pytest.raises(DataError, match="tag 'B-LOC' is not in the label list"):
    aligner.align(['a', 'b'], ['O', 'B-LOC'])
  with pytest.raises(DataError, match='2 words but 1 tags'):
    aligner.align(['a', 'b'], ['O'])
  with pytest.raises(DataError, match='predicted label id 5 at token 1 is outside the 2 labels'):
    aligner.word_tags(aligner.align(['a']), [0, 5, 0])
