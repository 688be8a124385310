"""HfVocabulary against transformers.AutoTokenizer on tiny tokenizers built here (tests/hf_tokenizers.py)."""
import copy
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece
import transformers

from jaxprompt.data import hf_vocab, vocab
from jaxprompt.errors import DataError
from jaxprompt.models import fingerprint
from tests import hf_tokenizers

ADDS_BOS = {'bpe': False, 'gpt2': False, 'llama3': True, 'llama2': True}


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('tokenizers')
  return {name: make(root / name) for name, make in hf_tokenizers.FOLDERS.items()}


@pytest.mark.parametrize('name', sorted(hf_tokenizers.FOLDERS))
def test_ids_texts_and_special_ids_equal_transformers(folders, name):
  ours = hf_vocab.HfVocabulary(str(folders[name]))
  theirs = transformers.AutoTokenizer.from_pretrained(str(folders[name]))
  for text in hf_tokenizers.TEXTS:
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    with_specials = theirs.encode(text)
    assert ours.encode_with_specials(text) == with_specials, text
    assert ours.decode(with_specials) == theirs.decode(with_specials, skip_special_tokens=True), text
  assert (ours.bos_id, ours.eos_id, ours.unk_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.unk_token_id)
  assert ours.pad_id == (theirs.pad_token_id if theirs.pad_token_id is not None else theirs.eos_token_id)
  assert ours.vocab_size == len(theirs)
  assert ours.adds_bos is ADDS_BOS[name] and not ours.adds_eos
  assert ours.encode_with_specials('x')[:1] == ([ours.bos_id] if ours.adds_bos else ours.encode('x')[:1])


def test_token_id_zero_is_a_real_token(folders):
  gpt2 = hf_vocab.HfVocabulary(str(folders['gpt2']))
  assert gpt2.decode([0]) and 0 not in gpt2.stop_ids and gpt2.eos_id == gpt2.vocab_size - 1
  assert gpt2.encode(gpt2.decode([0])) == [0]


def test_decode_stops_at_any_stop_id_and_reads_foreign_ids(folders):
  llama3 = hf_vocab.HfVocabulary(str(folders['llama3']))
  eot = llama3.stop_ids[1]
  assert llama3.stop_ids == (llama3.eos_id, eot)  # generation_config.json's second EOS also stops
  ids = llama3.encode('review: great fun')
  assert llama3.decode(ids + [eot] + ids) == llama3.decode(ids + [llama3.eos_id] + ids) == 'review: great fun'
  assert llama3.decode(ids + [llama3.vocab_size + 5]) == 'review: great fun'  # no UNK: dropped
  bpe = hf_vocab.HfVocabulary(str(folders['bpe']))
  assert bpe.decode([bpe.vocab_size + 5]) == bpe.decode([bpe.unk_id])


def test_tf_twins_and_a_seqio_task_tokenize_alike(folders):
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ours = hf_vocab.HfVocabulary(str(folders['llama3']))
  texts = hf_tokenizers.TEXTS
  features = {'targets': seqio.Feature(ours, add_eos=True)}
  ds = seqio.preprocessors.tokenize(tf.data.Dataset.from_tensor_slices({'targets': texts}), features)
  rows = [list(ex['targets']) for ex in ds.as_numpy_iterator()]
  assert rows == [ours.encode(t) for t in texts]
  padded = np.zeros((len(rows), 40), np.int32)
  for i, r in enumerate(rows):
    padded[i, :len(r)] = r[:40]
    padded[i, len(r):] = ours.eos_id
  decoded = ours.decode_tf(tf.constant(padded)).numpy()
  assert [d.decode() for d in decoded] == [ours.decode(r) for r in padded]


def test_encoding_imports_neither_tensorflow_nor_transformers(folders):
  code = ('import sys; from jaxprompt.data import hf_vocab; v = hf_vocab.HfVocabulary(sys.argv[1]); '
          'assert v.decode(v.encode("hello there")) == "hello there"; '
          'bad = [m for m in ("tensorflow", "transformers", "torch", "seqio") if m in sys.modules]; '
          'assert not bad, bad')
  subprocess.run([sys.executable, '-c', code, str(folders['gpt2'])], check=True, timeout=60)


def test_fingerprint_tells_tokenizers_apart_and_is_stable(folders):
  embedding = np.ones((8, 4), np.float32)
  ids = {
      n: fingerprint.model_fingerprint(None, hf_vocab.HfVocabulary(str(f)), embedding)['id'] for n, f in folders.items()
  }
  assert len(set(ids.values())) == len(ids)
  again = fingerprint.model_fingerprint(None, hf_vocab.HfVocabulary(str(folders['gpt2'])), embedding)['id']
  assert again == ids['gpt2']


def test_special_ids_from_special_tokens_map_and_generation_config(folders, tmp_path):
  folder = tmp_path / 'legacy'
  shutil.copytree(folders['bpe'], folder)
  # No added_tokens_decoder: special_tokens_map.json overrides tokenizer_config.json (transformers' legacy layout).
  (folder / 'special_tokens_map.json').write_text(json.dumps({'eos_token': {'content': '<pad>'}}))
  ours, theirs = hf_vocab.HfVocabulary(str(folder)), transformers.AutoTokenizer.from_pretrained(str(folder))
  assert ours.eos_id == theirs.eos_token_id == 3
  # Nothing in the tokenizer files: the model's generation config, then config.json.
  (folder / 'special_tokens_map.json').unlink()
  (folder / 'tokenizer_config.json').write_text(json.dumps({'tokenizer_class': 'PreTrainedTokenizerFast'}))
  (folder / 'config.json').write_text(json.dumps({'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 3}))
  (folder / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 0]}))
  ours = hf_vocab.HfVocabulary(str(folder))
  assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id, ours.stop_ids) == (1, 2, 3, None, (2, 0))


def test_sentencepiece_model_without_tokenizer_json(tmp_path):
  folder = tmp_path / 'spm'
  folder.mkdir()
  shutil.copy(vocab.default_vocabulary_path(), folder / 'tokenizer.model')
  ours = vocab.get_vocabulary(str(folder))  # a folder loads as a Hugging Face tokenizer
  sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / 'tokenizer.model'))
  text = 'Prompt tuning: a frozen model.'
  assert isinstance(ours, hf_vocab.HfVocabulary) and ours.encode(text) == sp.EncodeAsIds(text)
  assert (ours.eos_id, ours.unk_id, ours.bos_id, ours.adds_bos) == (1, 2, None, False)
  assert ours.decode(ours.encode(text) + [1, 5]) == text
  (folder / 'tokenizer_config.json').write_text(json.dumps({'add_eos_token': True}))
  assert hf_vocab.HfVocabulary(str(folder)).encode_with_specials(text) == sp.EncodeAsIds(text) + [1]


def test_value_semantics(folders):
  ours = hf_vocab.HfVocabulary(str(folders['gpt2']))
  assert pickle.loads(pickle.dumps(ours)) == ours and copy.deepcopy(ours) is ours
  assert hf_vocab.HfVocabulary(str(folders['gpt2'] / 'tokenizer.json')) == ours
  assert ours != hf_vocab.HfVocabulary(str(folders['bpe'])) and vocab.is_vocabulary(ours)
  assert vocab.resolve(str(folders['gpt2'])) == ours


@pytest.mark.parametrize('damage, culprit', [
    ({'tokenizer.json': '{"model": 3'}, 'tokenizer.json: not a Hugging Face tokenizer file'),
    ({'tokenizer_config.json': '[1, 2'}, 'tokenizer_config.json: not a JSON file'),
    ({'tokenizer_config.json': '["eos"]'}, 'tokenizer_config.json: expected a JSON object'),
    ({'tokenizer_config.json': '{"eos_token": "<nope>"}'}, "tokenizer_config.json names eos_token '<nope>'"),
    ({'tokenizer_config.json': '{"eos_token": 7}'}, 'tokenizer_config.json: eos_token must be a token string'),
    ({'generation_config.json': '{"eos_token_id": "2"}'}, 'generation_config.json: eos_token_id must be a token id'),
])
def test_bad_files_name_the_file(folders, tmp_path, damage, culprit):
  folder = tmp_path / 'damaged'
  shutil.copytree(folders['bpe'], folder)
  for name, text in damage.items():
    (folder / name).write_text(text)
  with pytest.raises(DataError, match=culprit.replace('[', r'\[')) as e:
    hf_vocab.HfVocabulary(str(folder))
  assert str(folder) in str(e.value)


def test_missing_folder_or_tokenizer(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    hf_vocab.HfVocabulary(str(tmp_path / 'nope'))
  with pytest.raises(DataError, match='has neither tokenizer.json nor tokenizer.model: not a Hugging Face'):
    hf_vocab.HfVocabulary(str(tmp_path))
  (tmp_path / 'vocab.txt').write_text('[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n')  # an old BERT folder's slow tokenizer
  with pytest.raises(DataError, match=r"only a slow tokenizer's vocab.txt: .*AutoTokenizer.from_pretrained"):
    hf_vocab.HfVocabulary(str(tmp_path))
