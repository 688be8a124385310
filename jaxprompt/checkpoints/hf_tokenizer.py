"""A SentencePiece model (+ seqio's extra ids) as Hugging Face tokenizer files that encode like seqio.

  spiece.model              the SentencePiece model itself, unchanged
  tokenizer.json            the `tokenizers` library's form, built here from the model's protobuf (no
                            `tokenizers` import): SentencePiece's normalizer (precompiled charsmap, extra
                            whitespace removal, dummy prefix, whitespace as '▁'), its Unigram lattice or its BPE
                            merges (each pair of pieces ranked by the score of the piece they make), byte fallback,
                            `</s>` appended like seqio's tasks do
  tokenizer_config.json     Unigram models (T5, mT5): `T5Tokenizer` with `extra_ids`; BPE models (the demo's):
                            the generic `PreTrainedTokenizerFast`, which loads tokenizer.json as it is
  special_tokens_map.json   for transformers 4

Why tokenizer.json: transformers 5's `T5Tokenizer` is a Unigram model only; given a BPE `spiece.model` it
builds a Unigram lattice from the BPE pieces and tokenizes differently (measured on the demo vocabulary).
seqio's extra ids (`<extra_id_0>` = the last id) follow the pieces in reverse, as `T5Tokenizer` numbers them.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any

from jaxprompt.errors import CheckpointError

SPM_FILE = 'spiece.model'
TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_FILE = 'special_tokens_map.json'
FILES = (SPM_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
PAD_ID, EOS_ID = 0, 1  # what t5x and seqio assume (pad and decoder start 0, end of sequence 1)
_SPACE = '\u2581'
# sentencepiece_model.proto enums
_UNIGRAM, _BPE = 1, 2
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _proto(data: bytes, where: str) -> Any:
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top  (protobuf)
  model = sentencepiece_model_pb2.ModelProto()
  try:
    model.ParseFromString(data)
  except Exception as e:  # protobuf raises DecodeError on anything that is not a model
    raise CheckpointError(f'{where}: not a SentencePiece model ({type(e).__name__}: {e})') from e
  if not model.pieces:
    raise CheckpointError(f'{where}: not a SentencePiece model (no pieces)')
  return model


def piece_count(data: bytes, where: str) -> int:
  """Pieces of a SentencePiece model (its ids before seqio's extra ids)."""
  return len(_proto(data, where).pieces)


def _check(model: Any, where: str) -> None:
  spec = model.trainer_spec
  if spec.model_type not in (_UNIGRAM, _BPE):
    raise CheckpointError(f'{where}: a SentencePiece {("", "", "", "word", "char")[spec.model_type]} model; only '
                          'unigram and BPE models convert to Hugging Face tokenizers')
  if (spec.pad_id, spec.eos_id) != (PAD_ID, EOS_ID):
    raise CheckpointError(f'{where}: pad id {spec.pad_id} and eos id {spec.eos_id}, but t5x and seqio models use pad '
                          f'{PAD_ID} and eos {EOS_ID}')
  if spec.treat_whitespace_as_suffix:
    raise CheckpointError(f'{where}: treat_whitespace_as_suffix has no Hugging Face tokenizer form')


def _normalizer(spec: Any) -> dict[str, Any]:
  """SentencePiece's normalization, in its order: charsmap, extra whitespace, dummy prefix, escaping."""
  steps: list[dict[str, Any]] = []
  if spec.precompiled_charsmap:
    steps.append({'type': 'Precompiled', 'precompiled_charsmap': base64.b64encode(spec.precompiled_charsmap).decode()})
  if spec.remove_extra_whitespaces:
    steps.append({'type': 'Replace', 'pattern': {'Regex': r'\A +| +\z'}, 'content': ''})
    steps.append({'type': 'Replace', 'pattern': {'Regex': ' {2,}'}, 'content': ' '})
  if spec.add_dummy_prefix:
    steps.append({'type': 'Prepend', 'prepend': _SPACE})  # not on empty text, like SentencePiece
  if spec.escape_whitespaces:
    steps.append({'type': 'Replace', 'pattern': {'String': ' '}, 'content': _SPACE})
  return {'type': 'Sequence', 'normalizers': steps}


def _merges(pieces: list[Any]) -> list[list[str]]:
  """BPE merges of a SentencePiece BPE model: SentencePiece joins the adjacent pair making the best-scored piece
  first, so every split of a normal piece into two normal pieces is a merge ranked by that piece's score."""
  normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
  ranked = []
  for piece, (score, index) in normal.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in normal and right in normal:
        ranked.append((-score, index, normal[left][1], left, right))
  return [[left, right] for *_, left, right in sorted(ranked)]


def _token(index: int, content: str, special: bool) -> dict[str, Any]:
  return {
      'id': index, 'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False,
      'special': special
  }


def extra_id_tokens(extra_ids: int) -> list[str]:
  return [f'<extra_id_{i}>' for i in range(extra_ids)]


def tokenizer_json(model: Any, extra_ids: int) -> dict[str, Any]:
  """The `tokenizers` serialization of `model` plus `extra_ids` sentinels after its pieces (the last first)."""
  pieces, spec = list(model.pieces), model.trainer_spec
  sentinels = list(reversed(extra_id_tokens(extra_ids)))  # ids len(pieces) ... : <extra_id_{n-1}> ... <extra_id_0>
  names = [p.piece for p in pieces] + sentinels
  byte_fallback = bool(spec.byte_fallback)
  if spec.model_type == _UNIGRAM:
    vocab = [[p.piece, p.score] for p in pieces] + [[s, 0.0] for s in sentinels]
    body = {'type': 'Unigram', 'unk_id': spec.unk_id, 'vocab': vocab, 'byte_fallback': byte_fallback}
  else:
    body = {
        'type': 'BPE', 'dropout': None, 'unk_token': pieces[spec.unk_id].piece, 'continuing_subword_prefix': None,
        'end_of_word_suffix': None, 'fuse_unk': True, 'byte_fallback': byte_fallback, 'ignore_merges': False,
        'vocab': {name: i for i, name in enumerate(names)}, 'merges': _merges(pieces)
    }
  added = [
      _token(i, p.piece, p.type != _USER_DEFINED)
      for i, p in enumerate(pieces)
      if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED)
  ]
  added += [_token(len(pieces) + i, s, True) for i, s in enumerate(sentinels)]
  eos = pieces[EOS_ID].piece
  decoders = [{'type': 'Replace', 'pattern': {'String': _SPACE}, 'content': ' '}]
  decoders += [{'type': 'ByteFallback'}] if byte_fallback else []
  decoders += [{'type': 'Fuse'}]
  if model.normalizer_spec.add_dummy_prefix:
    decoders.append({'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0})
  sequence, special = {'Sequence': {'id': 'A', 'type_id': 0}}, {'SpecialToken': {'id': eos, 'type_id': 0}}
  return {
      'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added,
      'normalizer': _normalizer(model.normalizer_spec), 'pre_tokenizer': None, 'post_processor': {
          'type': 'TemplateProcessing', 'single': [sequence, special],
          'pair': [sequence, special, {'Sequence': {'id': 'B', 'type_id': 0}},
                   special], 'special_tokens': {eos: {'id': eos, 'ids': [EOS_ID], 'tokens': [eos]}}
      }, 'decoder': {'type': 'Sequence', 'decoders': decoders}, 'model': body
  }


def write_tokenizer(folder: str, data: bytes, extra_ids: int, where: str) -> list[str]:
  """Writes the tokenizer files of the SentencePiece model `data` (read from `where`) into `folder`; returns
  their names."""
  model = _proto(data, where)
  _check(model, where)
  pieces, spec = model.pieces, model.trainer_spec
  special = {
      'eos_token': pieces[spec.eos_id].piece, 'unk_token': pieces[spec.unk_id].piece,
      'pad_token': pieces[spec.pad_id].piece
  }
  if extra_ids:
    special['additional_special_tokens'] = extra_id_tokens(extra_ids)
  if spec.model_type == _UNIGRAM:
    config = {'tokenizer_class': 'T5Tokenizer', 'extra_ids': extra_ids}
  else:
    config = {'tokenizer_class': 'PreTrainedTokenizerFast'}
  # seqio decodes without transformers' clean-up of spaces before punctuation.
  config.update(special, clean_up_tokenization_spaces=False)
  with open(os.path.join(folder, SPM_FILE), 'wb') as f:
    f.write(data)
  for name, value in ((TOKENIZER_FILE, tokenizer_json(model, extra_ids)), (TOKENIZER_CONFIG_FILE, config),
                      (SPECIAL_TOKENS_FILE, special)):
    with open(os.path.join(folder, name), 'w', encoding='utf-8') as f:
      json.dump(value, f, ensure_ascii=False, indent=1 if name != TOKENIZER_FILE else None)
  return list(FILES)
