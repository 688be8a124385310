"""Hugging Face BERT and RoBERTa in jaxprompt's names: config.json -> EncoderConfig, and each parameter's source
tensor (`encoder_plan`). `hf_encoder.py` reads a folder through both.

Tensors (`bert.` / `roberta.` in front when saved from a model with a head; torch `Linear` weights are [out, in]:
every kernel is transposed; files older than transformers 4 name LayerNorm parameters gamma / beta):
  embeddings.{word,position,token_type}_embeddings.weight -> {token,position,token_type}_embedder/embedding
  embeddings.LayerNorm.{weight,bias}                      -> embedder_norm/{scale,bias}
  encoder.layer.i.attention.self.{query,key,value}        -> encoder/layers_i/attention/{query,key,value}
  encoder.layer.i.attention.output.dense / .LayerNorm     -> .../attention/out, .../attention_layer_norm
  encoder.layer.i.intermediate.dense                      -> .../mlp/wi
  encoder.layer.i.output.dense / .LayerNorm               -> .../mlp/wo, .../mlp_layer_norm
  pooler.dense                                            -> pooler   (when the file has one)
The heads (`cls.*`, `lm_head.*`, `classifier.*`, `qa_outputs.*`) are not read: a head is trained with the method.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jaxprompt.checkpoints.hf_names import ACTIVATIONS, Entry
from jaxprompt.errors import ConfigError
from jaxprompt.models.encoder_config import EncoderConfig

_HEADS = ('Model', 'ForMaskedLM', 'ForPreTraining', 'ForSequenceClassification', 'ForTokenClassification',
          'ForMultipleChoice', 'ForQuestionAnswering')
BERT = tuple(f'Bert{h}' for h in _HEADS)
ROBERTA = tuple(f'Roberta{h}' for h in _HEADS if h != 'ForPreTraining')
SUPPORTED = BERT + ROBERTA
# Heads and buffers a file may hold beside the encoder.
IGNORED = re.compile(r'((bert|roberta)\.)?embeddings\.position_ids|(cls|lm_head|classifier|qa_outputs)\..*')
# The EncoderConfig fields config.json (and the file's pooler) decide; the rest are run-time choices.
ARCH_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_layers', 'activation', 'norm_epsilon',
               'max_positions', 'position_offset', 'type_vocab_size', 'pooler')
_OLD_NORM_NAMES = {'gamma': 'weight', 'beta': 'bias'}


def architecture(hf: Mapping[str, Any], where: str) -> str:
  """The one supported `architectures` entry of config.json (BertModel when it names none), or a ConfigError."""
  names = hf.get('architectures') or ['RobertaModel' if hf.get('model_type') == 'roberta' else 'BertModel']
  found = [a for a in names if a in SUPPORTED]
  if len(found) != 1:
    raise ConfigError(f'{where}: architectures {names} is not one BERT / RoBERTa model jaxprompt reads; supported: '
                      f'{", ".join(SUPPORTED)}')
  return found[0]


def _check_plain_encoder(hf: Mapping[str, Any], where: str) -> None:
  """Refuses what the network does not run: relative position embeddings, a causal (decoder) BERT."""
  kind = hf.get('position_embedding_type', 'absolute')
  if kind != 'absolute':
    raise ConfigError(f"{where}: position_embedding_type {kind!r} is not supported (only 'absolute')")
  for key in ('is_decoder', 'add_cross_attention'):
    if hf.get(key):
      raise ConfigError(f'{where}: {key}=true is not supported (only the bidirectional encoder)')


def encoder_config(hf: Mapping[str, Any], where: str, pooler: bool) -> tuple[EncoderConfig, str]:
  """config.json (parsed) and whether the file holds a pooler -> (EncoderConfig in float32, its architecture)."""
  arch = architecture(hf, where)
  _check_plain_encoder(hf, where)
  roberta = arch in ROBERTA
  act = hf.get('hidden_act', 'gelu')
  if act not in ACTIVATIONS:
    raise ConfigError(f'{where}: hidden_act {act!r} is not implemented (supported: {", ".join(sorted(ACTIVATIONS))})')
  try:
    emb, heads = int(hf['hidden_size']), int(hf['num_attention_heads'])
    pad = int(hf.get('pad_token_id', 1 if roberta else 0))
    fields = dict(vocab_size=int(hf['vocab_size']), emb_dim=emb, num_heads=heads, head_dim=emb // heads,
                  mlp_dim=int(hf['intermediate_size']), num_layers=int(hf['num_hidden_layers']),
                  activation=ACTIVATIONS[act], norm_epsilon=float(hf.get('layer_norm_eps', 1e-12)), max_positions=int(
                      hf.get('max_position_embeddings', 512)), position_offset=pad + 1 if roberta else 0,
                  type_vocab_size=int(hf.get('type_vocab_size', 2)), pooler=pooler, pad_id=pad)
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f'{where}: {arch} config is missing or garbles a field ({type(e).__name__}: {e})') from e
  if emb % heads:
    raise ConfigError(f'{where}: hidden_size {emb} is not a multiple of num_attention_heads {heads}')
  return EncoderConfig(**fields), arch


def check_config(config: EncoderConfig, implied: EncoderConfig, where: str) -> None:
  """A given config must describe the model the folder holds, field by architecture field."""
  for name in ARCH_FIELDS:
    ours, theirs = getattr(config, name), getattr(implied, name)
    if ours != theirs:
      raise ConfigError(f'{where}: the checkpoint implies {name}={theirs!r} but the given config has {name}={ours!r}')


def canonical_names(tensors: Mapping[str, Any]) -> dict[str, Any]:
  """The tensors by today's names (old files' `LayerNorm.gamma` / `.beta` are `.weight` / `.bias`)."""
  out = {}
  for key, tensor in tensors.items():
    head, _, last = key.rpartition('.')
    out[f'{head}.{_OLD_NORM_NAMES[last]}' if 'LayerNorm' in head and last in _OLD_NORM_NAMES else key] = tensor
  return out


def tensor_prefix(tensors: Mapping[str, Any], arch: str) -> str:
  """'bert.' / 'roberta.' when the encoder's tensors sit under the head model's attribute, else ''."""
  prefix = 'roberta.' if arch in ROBERTA else 'bert.'
  return prefix if f'{prefix}embeddings.word_embeddings.weight' in tensors else ''


def has_pooler(tensors: Mapping[str, Any], prefix: str) -> bool:
  return f'{prefix}pooler.dense.weight' in tensors


def _dense(plan: dict[str, Entry], ours: str, theirs: str, fan_in: int, fan_out: int) -> None:
  plan[f'{ours}/kernel'] = Entry(f'{theirs}.weight', (fan_in, fan_out), transpose=True)
  plan[f'{ours}/bias'] = Entry(f'{theirs}.bias', (fan_out,))


def _norm(plan: dict[str, Entry], ours: str, theirs: str, emb: int) -> None:
  plan[f'{ours}/scale'] = Entry(f'{theirs}.weight', (emb,))
  plan[f'{ours}/bias'] = Entry(f'{theirs}.bias', (emb,))


def encoder_plan(config: EncoderConfig, prefix: str) -> dict[str, Entry]:
  """{jaxprompt param path (unscanned): Entry} for `config`, its tensors after `prefix`."""
  emb, mlp, p = config.emb_dim, config.mlp_dim, f'{prefix}embeddings.'
  plan = {
      'token_embedder/embedding': Entry(f'{p}word_embeddings.weight', (config.vocab_size, emb)),
      'position_embedder/embedding': Entry(f'{p}position_embeddings.weight', (config.max_positions, emb)),
      'token_type_embedder/embedding': Entry(f'{p}token_type_embeddings.weight', (config.type_vocab_size, emb)),
  }
  _norm(plan, 'embedder_norm', f'{p}LayerNorm', emb)
  joined = config.num_heads * config.head_dim
  for i in range(config.num_layers):
    ours, theirs = f'encoder/layers_{i}', f'{prefix}encoder.layer.{i}'
    for name in ('query', 'key', 'value'):
      _dense(plan, f'{ours}/attention/{name}', f'{theirs}.attention.self.{name}', emb, joined)
    _dense(plan, f'{ours}/attention/out', f'{theirs}.attention.output.dense', joined, emb)
    _norm(plan, f'{ours}/attention_layer_norm', f'{theirs}.attention.output.LayerNorm', emb)
    _dense(plan, f'{ours}/mlp/wi', f'{theirs}.intermediate.dense', emb, mlp)
    _dense(plan, f'{ours}/mlp/wo', f'{theirs}.output.dense', mlp, emb)
    _norm(plan, f'{ours}/mlp_layer_norm', f'{theirs}.output.LayerNorm', emb)
  if config.pooler:
    _dense(plan, 'pooler', f'{prefix}pooler.dense', emb, emb)
  return plan


# ------------------------------------------------------------------------------------------------ writing

MLM_HEAD = 'cls.predictions.'


def mlm_head_plan(config: EncoderConfig) -> dict[str, Entry]:
  """{`models.mlm_head.MlmHead` param path: Entry} of BertForMaskedLM's head (its decoder is the tied embedding)."""
  emb = config.emb_dim
  plan = {'bias': Entry(f'{MLM_HEAD}bias', (config.vocab_size,))}
  _dense(plan, 'transform', f'{MLM_HEAD}transform.dense', emb, emb)
  _norm(plan, 'transform_norm', f'{MLM_HEAD}transform.LayerNorm', emb)
  return plan


def bert_hf_config(config: EncoderConfig, arch: str = 'BertForMaskedLM') -> dict[str, Any]:
  """config.json of a BERT or RoBERTa `config` as `arch` (what `encoder_config` reads back as the same
  architecture fields)."""
  roberta = arch in ROBERTA
  if arch not in SUPPORTED or config.position_offset != (config.pad_id + 1 if roberta else 0):
    raise ConfigError(f'{arch} with position_offset={config.position_offset}: Bert* architectures describe only BERT '
                      'folders (positions from 0), Roberta* only RoBERTa ones (positions from pad_id + 1)')
  if config.num_heads * config.head_dim != config.emb_dim:
    raise ConfigError(f'num_heads * head_dim = {config.num_heads * config.head_dim} is not emb_dim {config.emb_dim}: '
                      'BERT\'s config.json cannot say so')
  act = next(hf for hf, ours in ACTIVATIONS.items() if ours == config.activation)
  return {
      'architectures': [arch], 'model_type': 'bert', 'vocab_size': config.vocab_size, 'hidden_size': config.emb_dim,
      'num_attention_heads': config.num_heads, 'intermediate_size': config.mlp_dim, 'num_hidden_layers':
          config.num_layers, 'hidden_act': act, 'layer_norm_eps': config.norm_epsilon, 'max_position_embeddings':
              config.max_positions, 'type_vocab_size': config.type_vocab_size, 'pad_token_id': config.pad_id,
      'hidden_dropout_prob': config.dropout_rate, 'attention_probs_dropout_prob': config.dropout_rate,
      'position_embedding_type': 'absolute', 'initializer_range': 0.02, 'tie_word_embeddings': True, 'dtype': 'float32',
      **({'model_type': 'roberta'} if roberta else {})
  }
