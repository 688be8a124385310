"""Which ids a Hugging Face model folder calls BOS, EOS, PAD and UNK, resolved as transformers 5 resolves them.

The tokens (texts) come from the tokenizer's files, in transformers' order:
  1. the defaults of `tokenizer_config.json`'s `tokenizer_class` (Llama: `<s>` `</s>` `<unk>`; GPT-2: `<|endoftext|>`
     for BOS, EOS and UNK; Qwen2: `<|endoftext|>` for EOS, UNK and PAD; BERT: `[UNK]` `[PAD]`; RoBERTa: `<s>` `</s>`
     `<unk>` `<pad>`; any other class: none);
  2. `tokenizer_config.json`'s `bos_token` / `eos_token` / `unk_token` / `pad_token` (a string or an AddedToken
     dict with `content`);
  3. `special_tokens_map.json`'s, over those, only when `tokenizer_config.json` has no `added_tokens_decoder` (the
     legacy layout transformers still reads that way).
A token text becomes its id in the tokenizer (added tokens included). A token the tokenizer lacks is refused when a
file names it (transformers would append it past the model's embedding table) and ignored when only a class default
names it. What the tokenizer leaves unset falls back to the model's `generation_config.json`, then `config.json`
(`bos_token_id`, `eos_token_id`, `pad_token_id`), which is where `generate` reads them. Every EOS id of the
generation config (Llama 3 Instruct lists three) stops decoding: `stop_ids`, the tokenizer's EOS first.

Whether the tokenizer adds BOS / EOS itself also follows transformers 5: tokenizer.json's own post-processor decides
(Llama 2 / 3 put BOS in front, GPT-2 and Qwen2 add nothing; none adds nothing), and `tokenizer_config.json`'s
`add_bos_token` / `add_eos_token` count only for a SentencePiece `tokenizer.model` without tokenizer.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from jaxprompt.errors import DataError
from jaxprompt.formats import files

TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_FILE = 'special_tokens_map.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
MODEL_CONFIG_FILE = 'config.json'
NAMES = ('bos', 'eos', 'unk', 'pad')
_GPT2 = {'bos': '<|endoftext|>', 'eos': '<|endoftext|>', 'unk': '<|endoftext|>'}
_QWEN2 = {'eos': '<|endoftext|>', 'unk': '<|endoftext|>', 'pad': '<|endoftext|>'}
_LLAMA = {'bos': '<s>', 'eos': '</s>', 'unk': '<unk>'}
_BERT = {'unk': '[UNK]', 'pad': '[PAD]'}  # [CLS] / [SEP] are no BOS / EOS: the post-processor puts them around a text
_ROBERTA = {'bos': '<s>', 'eos': '</s>', 'unk': '<unk>', 'pad': '<pad>'}
# The special-token defaults of the tokenizer classes of the supported families (their `__init__` arguments).
CLASS_DEFAULTS: dict[str, dict[str, str]] = {
    'LlamaTokenizer': _LLAMA, 'LlamaTokenizerFast': _LLAMA, 'CodeLlamaTokenizer': _LLAMA, 'GPT2Tokenizer': _GPT2,
    'GPT2TokenizerFast': _GPT2, 'Qwen2Tokenizer': _QWEN2, 'Qwen2TokenizerFast': _QWEN2, 'BertTokenizer': _BERT,
    'BertTokenizerFast': _BERT, 'RobertaTokenizer': _ROBERTA, 'RobertaTokenizerFast': _ROBERTA
}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The resolved ids (None: the model has none) and what the tokenizer adds to a text by itself."""
  bos: int | None
  eos: int | None
  unk: int | None
  pad: int | None
  stop: tuple[int, ...]  # every id that ends a generated text (the EOS first)
  add_bos: bool | None  # tokenizer_config.json's add_bos_token (None: not given); SentencePiece models only
  add_eos: bool | None

  def record(self) -> dict[str, Any]:
    """JSON-able, for the vocabulary's fingerprint."""
    return dataclasses.asdict(self) | {'stop': list(self.stop)}


def read_json(folder: str, name: str) -> dict[str, Any] | None:
  """The JSON object in `folder/name`, None when the file is absent; DataError naming the file when it is not one."""
  path = os.path.join(folder, name)
  if not files.exists(path):
    return None
  try:
    value = json.loads(files.read_bytes(path).decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f'{path}: not a JSON file ({type(e).__name__}: {e})') from e
  if not isinstance(value, dict):
    raise DataError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


def _token_text(value: Any, where: str, key: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get('content'), str):
    return value['content']
  raise DataError(f'{where}: {key} must be a token string or an AddedToken object with "content", got {value!r}')


def token_texts(folder: str, config: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
  """{name: (token text, the file naming it; None for a class default)} of the tokens the tokenizer files set."""
  out: dict[str, tuple[str, str | None]] = {
      k: (v, None) for k, v in CLASS_DEFAULTS.get(str(config.get('tokenizer_class')), {}).items()
  }
  layers = [(TOKENIZER_CONFIG_FILE, config)]
  if 'added_tokens_decoder' not in config:
    layers.append((SPECIAL_TOKENS_FILE, read_json(folder, SPECIAL_TOKENS_FILE) or {}))
  for name, values in layers:
    where = os.path.join(folder, name)
    for key in NAMES:
      if f'{key}_token' in values:
        text = _token_text(values[f'{key}_token'], where, f'{key}_token')
        if text is None:
          out.pop(key, None)
        else:
          out[key] = (text, where)
  return out


def _model_ids(folder: str, key: str) -> tuple[int, ...]:
  """The ids the generation config (else config.json) gives `key`: `bos_token_id` may be an int, `eos_token_id` a
  list."""
  for name in (GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE):
    config = read_json(folder, name)
    if config is None or config.get(key) is None:
      continue
    value = config[key]
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
      raise DataError(f'{os.path.join(folder, name)}: {key} must be a token id or a list of them, got {value!r}')
    return tuple(values)
  return ()


def _flag(config: Mapping[str, Any], key: str, folder: str) -> bool | None:
  value = config.get(key)
  if value is not None and not isinstance(value, bool):
    raise DataError(f'{os.path.join(folder, TOKENIZER_CONFIG_FILE)}: {key} must be true or false, got {value!r}')
  return value


def resolve(folder: str, token_to_id: Callable[[str], int | None], tokenizer_file: str) -> SpecialIds:
  """The special ids of the model folder `folder` whose tokenizer maps a token text to its id with `token_to_id`
  (`tokenizer_file` names that tokenizer in errors)."""
  config = read_json(folder, TOKENIZER_CONFIG_FILE) or {}
  ids: dict[str, int | None] = {}
  for key, (text, where) in token_texts(folder, config).items():
    ids[key] = token_to_id(text)
    if ids[key] is None and where is not None:
      raise DataError(f'{where} names {key}_token {text!r}, which {tokenizer_file} does not have: add it to the '
                      f'tokenizer or set {key}_token to one of its tokens')
  model = {key: _model_ids(folder, f'{key}_token_id') for key in ('bos', 'eos', 'pad')}
  for key in model:
    if ids.get(key) is None and model[key]:
      ids[key] = model[key][0]
  eos = ids.get('eos')
  stop = tuple(dict.fromkeys(([eos] if eos is not None else []) + list(model['eos'])))
  return SpecialIds(bos=ids.get('bos'), eos=eos, unk=ids.get('unk'), pad=ids.get('pad'), stop=stop,
                    add_bos=_flag(config, 'add_bos_token', folder), add_eos=_flag(config, 'add_eos_token', folder))
