"""The demo models' vocabularies, trained on the generated text (`demo.data`), deterministic given the seed.

  sentencepiece  the T5 and causal demo models' BPE pieces (byte fallback: any text still encodes) -> vocab.model
  wordpiece      the encoder demo model's lower-cased BERT WordPiece (`tokenizers`) -> tokenizer.json
Each trainer writes its file and returns what pretraining records about it (`pretraining.json`, config.json).
"""
from __future__ import annotations

import collections
import io
from typing import Any

from jaxprompt.demo import data
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError

SP_OPTIONS = dict(model_type='bpe', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, character_coverage=1.0,
                  num_threads=1, split_digits=True, shuffle_input_sentence=False, hard_vocab_limit=False, minloglevel=2)
# BERT's special tokens, in bert-base-uncased's order of roles: ids 0..4.
WORDPIECE_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
WORDPIECE_TEXTS = 20000  # review texts the WordPiece vocabulary is counted on
_TRAINER_VOCAB = 4096  # more than the texts need: the trainer merges until every word is whole


def train_sentencepiece(seed: int, path: str, vocab_size: int = demo_model.VOCAB_SIZE) -> dict[str, Any]:
  """SentencePiece BPE over the generated skills' text, written to `path`."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(data.corpus(seed)), model_writer=buffer, vocab_size=vocab_size,
                                 **SP_OPTIONS)
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return {'type': 'sentencepiece', 'options': SP_OPTIONS, 'extra_ids': 0, 'pad_id': 0, 'eos_id': 1, 'unk_id': 2}


def _bert_tokenizer(model: Any) -> Any:
  """A `tokenizers.Tokenizer` over `model` with BERT's lower-casing normalizer, pre-tokenizer and decoder."""
  from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top,g-multiple-import
  tokenizer = Tokenizer(model)
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece()
  return tokenizer


def train_wordpiece(seed: int, path: str, vocab_size: int) -> dict[str, Any]:
  """A lower-cased BERT WordPiece vocabulary (at most `vocab_size` tokens, else a ConfigError) over review texts, as
  a tokenizer.json that puts [CLS] ... [SEP] around a text (and [CLS] a [SEP] b [SEP] around a pair, b with token
  type 1).

  `tokenizers`' trainer breaks ties between equally frequent merges in a hash order that changes from run to run,
  so its vocabulary is made canonical: the special tokens, the characters it kept (`x`, `##x`), then the whole words
  it learned, commonest first (ties alphabetical); the pieces it merged on the way are dropped (a word the text never
  had is spelt from the longest known word it starts with, then characters).
  """
  from tokenizers import models, processors, trainers  # pylint: disable=g-import-not-at-top,g-multiple-import
  texts = list(data.iter_review_texts(WORDPIECE_TEXTS, seed, 'vocab'))
  tokenizer = _bert_tokenizer(models.WordPiece(unk_token='[UNK]'))
  trainer = trainers.WordPieceTrainer(vocab_size=_TRAINER_VOCAB, special_tokens=list(WORDPIECE_SPECIALS),
                                      show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  learned = tokenizer.get_vocab()
  counts = collections.Counter(
      word for text in texts
      for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)))
  characters = sorted(t for t in learned if len(t.removeprefix('##')) == 1)
  words = sorted((w for w in counts if w in learned and len(w) > 1), key=lambda w: (-counts[w], w))
  vocab = {token: i for i, token in enumerate((*WORDPIECE_SPECIALS, *characters, *words))}
  if len(vocab) > vocab_size:
    raise ConfigError(f'the WordPiece vocabulary of the generated text has {len(vocab)} tokens, more than the '
                      f'{vocab_size} the model embeds: raise its vocab_size')
  tokenizer = _bert_tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
  tokenizer.add_special_tokens(list(WORDPIECE_SPECIALS))  # their ids above; matched whole in a text, never decoded
  cls, sep = vocab['[CLS]'], vocab['[SEP]']
  tokenizer.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
                                                           special_tokens=[('[CLS]', cls), ('[SEP]', sep)])
  tokenizer.save(path)
  ids = {name.strip('[]').lower() + '_id': vocab[name] for name in WORDPIECE_SPECIALS}
  return {'type': 'wordpiece', 'lowercase': True, 'texts': WORDPIECE_TEXTS, 'size': len(vocab), **ids}
