"""BERT's WordPiece and RoBERTa's byte-level BPE tokenizer.json through `HfVocabulary`: the ids (with [CLS] / [SEP]
and <s> / </s> where transformers' tokenizer puts them) and the special ids are transformers'."""
import pytest

from jaxprompt.data.hf_vocab import HfVocabulary
from tests.hf_tokenizers import TEXTS, bert_folder, roberta_folder

transformers = pytest.importorskip('transformers')


@pytest.mark.parametrize('writer', [bert_folder, roberta_folder])
def test_ids_and_special_ids_match_transformers(writer, tmp_path):
  folder = writer(tmp_path / writer.__name__)
  ours, theirs = HfVocabulary(folder), transformers.AutoTokenizer.from_pretrained(folder)
  for text in TEXTS:
    want = theirs(text)['input_ids']
    assert ours.encode_with_specials(text) == want, text
    assert ours.encode(text) == theirs(text, add_special_tokens=False)['input_ids'], text
    assert ours.decode(want) == theirs.decode(want, skip_special_tokens=True), text
  first, last = ours.encode_with_specials(TEXTS[0])[::len(ours.encode_with_specials(TEXTS[0])) - 1]
  assert (first, last) == (theirs.cls_token_id, theirs.sep_token_id)
  assert (ours.pad_id, ours.unk_id, ours.bos_id, ours.eos_id) == (theirs.pad_token_id, theirs.unk_token_id,
                                                                  theirs.bos_token_id, theirs.eos_token_id)
  # RoBERTa's <s> / </s> are its BOS / EOS, which its tokenizer adds; BERT's [CLS] / [SEP] are neither.
  assert (ours.adds_bos, ours.adds_eos) == ((False, False) if writer is bert_folder else (True, True))
