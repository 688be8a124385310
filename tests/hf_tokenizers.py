"""Tiny Hugging Face tokenizer folders built at test time with the `tokenizers` trainers (no download).

Each writer saves tokenizer.json and tokenizer_config.json (+ generation_config.json where the model family ships
one) into a folder `transformers.AutoTokenizer` and `jaxprompt.data.hf_vocab.HfVocabulary` both load:
  bpe_folder     whitespace BPE, `PreTrainedTokenizerFast`, `<unk>` `<s>` `</s>` `<pad>` first (pad is a real id)
  gpt2_folder    byte-level BPE like GPT-2: `GPT2Tokenizer`, its class defaults name `<|endoftext|>` (the last id),
                 no BOS added, id 0 a real token ('!')
  llama3_folder  byte-level BPE like Llama 3: `PreTrainedTokenizerFast`, a TemplateProcessing post-processor that
                 puts `<|begin_of_text|>` in front, generation_config.json with two EOS ids
  bert_folder    lowercasing WordPiece like BERT: `BertTokenizer` (its class defaults name `[UNK]` `[PAD]`), a
                 `[CLS] $A [SEP]` post-processor
  roberta_folder byte-level BPE like RoBERTa: `RobertaTokenizer` (`<s>` `<pad>` `</s>` `<unk>` by class default),
                 a `<s> $A </s>` post-processor
  llama2_folder  Metaspace BPE with byte fallback like Llama 2: `LlamaTokenizer` (transformers 5 rebuilds its
                 pipeline from the vocabulary and merges), a `<s> $A` post-processor, `add_bos_token` in the config
"""
from __future__ import annotations

import json
import pathlib

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    'The quick brown fox jumps over the lazy dog.',
    'Prompt tuning learns a few soft tokens in front of the input!',
    'A frozen model, a tiny prompt: 12 tokens, 3 labels, 100% of the time?',
    'Großartig -- naïve café, déjà vu; emojis like 🙂 survive byte-level tokenizers.',
    'positive negative neutral review: this movie was great fun',
] * 4
TEXTS = [
    'The quick brown fox!', 'naïve café 🙂 and unseen words: zyx', '  two  spaces', '', 'review: great fun', '!!!',
    'Hello world\nnew line'
]


def _write(folder: pathlib.Path, tokenizer: Tokenizer, config: dict, generation: dict | None = None) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / 'tokenizer.json'))
  (folder / 'tokenizer_config.json').write_text(json.dumps(config))
  if generation is not None:
    (folder / 'generation_config.json').write_text(json.dumps(generation))
  return folder


def bpe_folder(folder: pathlib.Path) -> pathlib.Path:
  tokenizer = Tokenizer(models.BPE(unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(
      CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=['<unk>', '<s>', '</s>', '<pad>'],
                                  show_progress=False))
  config = {
      'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>',
      'pad_token': '<pad>'
  }
  return _write(folder, tokenizer, config)


def _byte_level(special_tokens: list[str]) -> Tokenizer:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
      CORPUS,
      trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tokenizer.add_special_tokens(special_tokens)  # after the learned tokens, as GPT-2 / Llama 3 number them
  return tokenizer


def gpt2_folder(folder: pathlib.Path) -> pathlib.Path:
  tokenizer = _byte_level(['<|endoftext|>'])
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  return _write(folder, tokenizer, {'tokenizer_class': 'GPT2Tokenizer', 'model_max_length': 1024})


def llama3_folder(folder: pathlib.Path) -> pathlib.Path:
  tokenizer = _byte_level(['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>'])
  bos = tokenizer.token_to_id('<|begin_of_text|>')
  tokenizer.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single='<|begin_of_text|> $A', pair='<|begin_of_text|> $A <|begin_of_text|> $B:1',
                                    special_tokens=[('<|begin_of_text|>', bos)])
  ])
  ids = {t: tokenizer.token_to_id(t) for t in ('<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>')}
  added = {
      str(i): {
          'content': t, 'lstrip': False, 'normalized': False, 'rstrip': False, 'single_word': False, 'special': True
      } for t, i in ids.items()
  }
  config = {
      'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<|begin_of_text|>', 'eos_token': '<|end_of_text|>',
      'added_tokens_decoder': added
  }
  generation = {'bos_token_id': ids['<|begin_of_text|>'], 'eos_token_id': [ids['<|end_of_text|>'], ids['<|eot_id|>']]}
  return _write(folder, tokenizer, config, generation)


def llama2_folder(folder: pathlib.Path) -> pathlib.Path:
  trained = Tokenizer(models.BPE(unk_token='<unk>'))
  trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='first', split=False)
  trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, show_progress=False))
  learned = json.loads(trained.to_str())['model']
  pieces = ['<unk>', '<s>', '</s>'] + [f'<0x{b:02X}>' for b in range(256)]  # byte-fallback pieces are ordinary tokens
  pieces += sorted(learned['vocab'], key=learned['vocab'].get)
  tokenizer = Tokenizer(
      models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[tuple(m) for m in learned['merges']],
                 unk_token='<unk>', byte_fallback=True, fuse_unk=True))
  tokenizer.pre_tokenizer = trained.pre_tokenizer
  tokenizer.decoder = decoders.Sequence([
      decoders.Replace('▁', ' '),
      decoders.ByteFallback(),
      decoders.Fuse(), decoders.Strip(' ', 1, 0)
  ])
  tokenizer.add_special_tokens(['<unk>', '<s>', '</s>'])
  tokenizer.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A <s> $B:1',
                                                           special_tokens=[('<s>', 1)])
  config = {'tokenizer_class': 'LlamaTokenizer', 'add_bos_token': True, 'add_eos_token': False, 'legacy': False}
  return _write(folder, tokenizer, config)


FOLDERS = {'bpe': bpe_folder, 'gpt2': gpt2_folder, 'llama3': llama3_folder, 'llama2': llama2_folder}


def bert_folder(folder: pathlib.Path) -> pathlib.Path:
  tokenizer = Tokenizer(models.WordPiece(unk_token='[UNK]'))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece()
  tokenizer.train_from_iterator(
      CORPUS,
      trainers.WordPieceTrainer(vocab_size=200, special_tokens=['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'],
                                show_progress=False))
  ids = {t: tokenizer.token_to_id(t) for t in ('[CLS]', '[SEP]')}
  tokenizer.post_processor = processors.BertProcessing(('[SEP]', ids['[SEP]']), ('[CLS]', ids['[CLS]']))
  return _write(folder, tokenizer, {'tokenizer_class': 'BertTokenizer', 'do_lower_case': True})


def roberta_folder(folder: pathlib.Path) -> pathlib.Path:
  tokenizer = _byte_level(['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
  ids = {t: tokenizer.token_to_id(t) for t in ('<s>', '</s>')}
  tokenizer.post_processor = processors.RobertaProcessing(('</s>', ids['</s>']), ('<s>', ids['<s>']),
                                                          add_prefix_space=False)
  return _write(folder, tokenizer, {'tokenizer_class': 'RobertaTokenizer'})
