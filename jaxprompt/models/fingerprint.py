"""Which frozen model a prompt was trained on: a small JSON-able record kept with every exported prompt.

A prompt is only meaningful over the embedding table it was tuned against, so every file a run leaves
(checkpoint step dirs, `final_*` files, `export`, PEFT adapters) records the frozen model's fingerprint:

  {'id':         first 16 hex digits of the sha256 of the three parts below (their canonical JSON),
   'config':     the network's structural fields (sizes, activations, relative-position buckets),
   'vocabulary': {'size', 'sha256' of the SentencePiece model bytes and extra ids (or the class name)},
   'embedding':  {'shape', 'sha256' of the first EMBEDDING_ROWS rows rounded to bfloat16}}

Hashing the first rows, not the whole table, keeps it cheap for an 11B model on a pod (the rows are gathered
to the host once): two checkpoints that agree on 1024 rows of their embedding are the same model for any
practical purpose. The rows are rounded to bfloat16 first, so one checkpoint loaded as float32 (CPU) or
bfloat16 (`param_dtype` on TPU) has one fingerprint; a change smaller than bfloat16's precision (~0.4%) in
every hashed value goes unseen. Loading a prompt whose recorded fingerprint differs is refused (`check`)
unless the caller allows a deliberate transfer; a prompt with no record (older files, hand-made arrays) loads
with a warning. Where a record is kept (sidecar JSON files) is `jaxprompt.formats.fingerprint_files`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats.fingerprint_files import Fingerprint

log = logging.getLogger('jaxprompt')

EMBEDDING_ROWS = 1024
# The structural fields of T5Config: what decides whether a prompt's numbers mean the same thing.
CONFIG_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'num_encoder_layers', 'num_decoder_layers', 'head_dim',
                 'mlp_dim', 'mlp_activations', 'logits_via_embedding', 'relpos_num_buckets', 'relpos_max_distance')
# What else decides a family's numbers: an encoder's position table and its offset (RoBERTa numbers tokens from 2),
# its token types, norm and activation (so a BERT and a RoBERTa of one size differ in the record, not only in the
# embedding hash). The families not named here keep their records, and so their ids, unchanged.
FAMILY_FIELDS = {
    'encoder_only': ('max_positions', 'position_offset', 'type_vocab_size', 'norm_epsilon', 'activation'),
}
# The family fields `describe` names.
DESCRIBED_FIELDS = ('max_positions', 'position_offset', 'type_vocab_size')


def _config_record(config: Any) -> dict[str, Any]:
  """The structural fields of `config`; a family other than T5 also records its name, its key/value heads and
  each stack's depth (`num_<stack>_layers`), which T5 records do not carry so that their ids stay unchanged."""
  record = {f: _jsonable(getattr(config, f)) for f in CONFIG_FIELDS if hasattr(config, f)}
  family = getattr(config, 'family', 'encoder_decoder')
  if family != 'encoder_decoder':
    record.update(family=family, num_kv_heads=int(config.num_kv_heads))
    record.update({f: _jsonable(getattr(config, f)) for f in FAMILY_FIELDS.get(family, ()) if hasattr(config, f)})
    for stack in ('encoder', 'decoder'):
      try:
        record[f'num_{stack}_layers'] = int(config.stack_depth(stack))
      except ConfigError:  # the family has no such stack
        pass
  return record


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _vocabulary_record(vocabulary: Any) -> dict[str, Any]:
  if vocabulary is None:
    return {'size': None, 'sha256': None}
  size = int(getattr(vocabulary, 'vocab_size', 0) or 0) or None
  model = getattr(vocabulary, 'sp_model', None)  # seqio.SentencePieceVocabulary: the serialized model
  if isinstance(model, bytes):
    digest = _sha256(model + f'|extra_ids={getattr(vocabulary, "extra_ids", 0)}'.encode())
  else:
    digest = _sha256(type(vocabulary).__name__.encode())
  return {'size': size, 'sha256': digest}


def model_fingerprint(config: Any, vocabulary: Any, embedding: Any) -> Fingerprint:
  """The fingerprint of a frozen model: `config` (any family's), its `vocabulary` (seqio; None when unknown) and
  its token embedding table `embedding` [vocab, embed] (numpy or a jax array, gathered across hosts here)."""
  from jaxprompt.parallel import host  # pylint: disable=g-import-not-at-top  (keeps this module jax-free)
  if len(np.shape(embedding)) != 2:
    raise PromptError(f'a model fingerprint needs the token embedding table [vocab, embed], got shape '
                      f'{tuple(np.shape(embedding))}')
  # float32 first: bfloat16 -> float32 -> bfloat16 is exact, so a float32 and a bfloat16 copy hash alike.
  rows = np.asarray(host.host_value(embedding[:EMBEDDING_ROWS]), np.float32).astype(ml_dtypes.bfloat16)
  record = {
      'config': _config_record(config),
      'vocabulary': _vocabulary_record(vocabulary),
      'embedding': {'shape': [int(n) for n in np.shape(embedding)], 'sha256': _sha256(rows.tobytes())},
  }
  record['id'] = _sha256(json.dumps(record, sort_keys=True).encode())[:16]
  return record


def _jsonable(value: Any) -> Any:
  return list(value) if isinstance(value, (tuple, list)) else value


def describe(fingerprint: Mapping[str, Any] | None) -> str:
  """One line naming a fingerprint: its id, the family when not T5, and the sizes its record holds (each stack's
  depth, `num_<stack>_layers`, whichever stacks the family has; an encoder's position table and token types)."""
  if not fingerprint:
    return 'no recorded model'
  c = fingerprint.get('config', {})
  depths = sorted((k for k in c if k.startswith('num_') and k.endswith('_layers')), key=lambda k: 'encoder' not in k)
  names = ('family', 'emb_dim', *depths, 'num_heads', 'num_kv_heads', 'vocab_size', *DESCRIBED_FIELDS)
  sizes = ', '.join(f'{k}={c[k]}' for k in names if k in c)
  return f"model {fingerprint.get('id', '?')} ({sizes})"


def differences(recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
  """What differs between two fingerprints, as short phrases ('emb_dim 512 vs 768', 'embedding table')."""
  out = []
  rc, ac = recorded.get('config', {}), actual.get('config', {})
  out += [f'{k} {rc[k]} vs {ac.get(k)}' for k in sorted(rc) if rc[k] != ac.get(k)]
  if recorded.get('vocabulary') != actual.get('vocabulary'):
    out.append('vocabulary')
  if recorded.get('embedding') != actual.get('embedding'):
    out.append('embedding table')
  return out


def matches(recorded: Mapping[str, Any] | None, actual: Mapping[str, Any]) -> bool | None:
  """True / False: `recorded` is / is not the fingerprint `actual`; None when nothing was recorded."""
  return None if not recorded else recorded.get('id') == actual.get('id')


def mismatch(recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
  """'model <id> (sizes), not on this model <id> (sizes) (differs in: ...)': the two models, for messages."""
  return (f'{describe(recorded)}, not on this {describe(actual)} '
          f'(differs in: {", ".join(differences(recorded, actual)) or "id"})')


def check(recorded: Mapping[str, Any] | None, actual: Mapping[str, Any], *, what: str,
          allow_other_model: bool = False) -> bool | None:
  """Refuses (PromptError naming both models) a prompt `what` recorded for another frozen model, unless
  `allow_other_model` (then a warning). No record: a warning, and the prompt loads. Returns `matches`."""
  same = matches(recorded, actual)
  if same is None:
    log.warning('%s records no frozen-model fingerprint; loading it onto %s unchecked', what, describe(actual))
  elif not same:
    message = f'{what} was trained on {mismatch(recorded, actual)}'
    if not allow_other_model:
      raise PromptError(f'{message}; pass --allow_other_model (allow_other_model=True) to transfer it '
                        'deliberately')
    log.warning('%s; loading it anyway (allow_other_model)', message)
  return same
