"""Hugging Face causal LMs (Llama, Mistral, Qwen2, GPT-2) in jaxprompt's names: config.json -> DecoderConfig, and
each parameter's source tensor (`causal_plan`). `hf_causal.py` reads a folder through both.

Tensors, Llama family (torch `Linear` weights are [out, in]: every kernel is transposed):
  model.embed_tokens.weight                         -> token_embedder/embedding          [vocab, embed]
  model.layers.i.input_layernorm.weight             -> decoder/layers_i/pre_self_attention_layer_norm/scale
  model.layers.i.self_attn.{q,k,v,o}_proj.{weight,bias} -> .../self_attention/{query,key,value,out}/{kernel,bias}
  model.layers.i.post_attention_layernorm.weight    -> .../pre_mlp_layer_norm/scale
  model.layers.i.mlp.{gate,up,down}_proj.{weight,bias} -> .../mlp/{wi_0,wi_1,wo}/{kernel,bias}
  model.norm.weight                                 -> decoder/decoder_norm/scale
  lm_head.weight                                    -> decoder/logits_dense/kernel (untied heads only)
GPT-2 (`transformer.` in front when saved from GPT2LMHeadModel; Conv1D weights are already [in, out]):
  wte.weight, wpe.weight                            -> token_embedder/embedding, position_embedder/embedding
  h.i.ln_1, h.i.ln_2, ln_f {weight, bias}           -> pre_self_attention_layer_norm, pre_mlp_layer_norm,
                                                       decoder_norm {scale, bias}
  h.i.attn.c_attn.{weight,bias} [.., 3 * embed]     -> self_attention/{query,key,value}: its thirds, in order
  h.i.attn.c_proj, h.i.mlp.c_fc, h.i.mlp.c_proj     -> self_attention/out, mlp/wi, mlp/wo
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jaxprompt.checkpoints.hf_names import ACTIVATIONS, Entry
from jaxprompt.errors import ConfigError
from jaxprompt.models.decoder_config import DecoderConfig, rope_scaling_from

LLAMA_FAMILY = ('LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM')
GPT2 = 'GPT2LMHeadModel'
SUPPORTED = LLAMA_FAMILY + (GPT2,)
HEAD_KEY = 'lm_head.weight'
# Buffers older files saved beside the weights: rotary tables and GPT-2's causal-mask constants.
IGNORED = re.compile(r'(.*\.rotary_emb\.inv_freq|(transformer\.)?h\.\d+\.attn\.(masked_)?bias)$')
# The DecoderConfig fields config.json decides (the rest are run-time choices: dtype, scan, remat, dropout).
ARCH_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim', 'num_layers',
               'mlp_activations', 'norm', 'norm_epsilon', 'positions', 'max_positions', 'rope_theta', 'rope_scaling',
               'qkv_bias', 'out_bias', 'mlp_bias', 'tie_word_embeddings')


def architecture(hf: Mapping[str, Any], where: str) -> str:
  """The one supported `architectures` entry of config.json, or a ConfigError naming the file."""
  names = hf.get('architectures') or []
  found = [a for a in names if a in SUPPORTED]
  if len(found) != 1:
    raise ConfigError(f'{where}: architectures {names} is not one causal LM jaxprompt reads; supported: '
                      f'{", ".join(SUPPORTED)}')
  return found[0]


def _activation(name: str, where: str) -> str:
  if name not in ACTIVATIONS:
    raise ConfigError(f'{where}: activation {name!r} is not implemented (supported: {", ".join(sorted(ACTIVATIONS))})')
  return ACTIVATIONS[name]


def _first(ids: Any) -> int | None:
  return ids[0] if isinstance(ids, list) and ids else (ids if isinstance(ids, int) else None)


def _rope(hf: Mapping[str, Any], where: str) -> tuple[float, Any]:
  """(theta, scaling) from transformers 5's `rope_parameters` or the older `rope_theta` + `rope_scaling`."""
  fields = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  if not isinstance(fields, Mapping) or any(isinstance(v, Mapping) for v in fields.values()):
    raise ConfigError(f'{where}: rope parameters {fields!r} are not one flat dict (per-layer rope is not supported)')
  theta = fields.get('rope_theta', hf.get('rope_theta', 10000.0))
  return float(theta), rope_scaling_from(fields, where)


def _check_full_attention(hf: Mapping[str, Any], arch: str, where: str, max_positions: int) -> None:
  """Refuses sliding-window attention (the network attends to every earlier row)."""
  window = hf.get('sliding_window', 4096) if arch == 'MistralForCausalLM' else hf.get('sliding_window')
  if arch == 'Qwen2ForCausalLM' and not hf.get('use_sliding_window', False):
    window = None
  kinds = set(hf.get('layer_types') or ['full_attention'])
  if (window is not None and window < max_positions) or kinds != {'full_attention'}:
    raise ConfigError(f'{where}: sliding-window attention (sliding_window={window}, layer types {sorted(kinds)}) '
                      f'is not supported; only full causal attention is')


def _llama_fields(hf: Mapping[str, Any], arch: str, where: str) -> dict[str, Any]:
  heads = int(hf['num_attention_heads'])
  kv_default = {'MistralForCausalLM': 8, 'Qwen2ForCausalLM': 32}.get(arch, heads)
  max_positions = int(hf.get('max_position_embeddings', 2048))
  _check_full_attention(hf, arch, where, max_positions)
  theta, scaling = _rope(hf, where)
  attention_bias = bool(hf.get('attention_bias', False)) if arch == 'LlamaForCausalLM' else False
  return dict(vocab_size=int(hf['vocab_size']), emb_dim=int(hf['hidden_size']), num_heads=heads, num_kv_heads=int(
      hf.get('num_key_value_heads') or
      kv_default), head_dim=int(hf.get('head_dim') or
                                int(hf['hidden_size']) // heads), mlp_dim=int(hf['intermediate_size']),
              num_layers=int(hf['num_hidden_layers']), mlp_activations=(_activation(hf.get('hidden_act', 'silu'),
                                                                                    where), 'linear'), norm='rms',
              norm_epsilon=float(hf.get('rms_norm_eps',
                                        1e-6)), positions='rotary', max_positions=max_positions, rope_theta=theta,
              rope_scaling=scaling, qkv_bias=attention_bias or arch == 'Qwen2ForCausalLM', out_bias=attention_bias,
              mlp_bias=bool(hf.get('mlp_bias', False)) if arch == 'LlamaForCausalLM' else False,
              tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)), bos_id=_first(
                  hf.get('bos_token_id', None if arch == 'Qwen2ForCausalLM' else 1)), eos_id=_first(
                      hf.get('eos_token_id',
                             None if arch == 'Qwen2ForCausalLM' else 2)), pad_id=_first(hf.get('pad_token_id')))


def _gpt2_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  for key, want in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False), ('add_cross_attention',
                                                                                               False)):
    if bool(hf.get(key, want)) != want:
      raise ConfigError(f'{where}: GPT-2 with {key}={hf[key]} is not supported (only {key}={want})')
  emb, heads = int(hf.get('n_embd', 768)), int(hf.get('n_head', 12))
  return dict(vocab_size=int(hf.get('vocab_size', 50257)), emb_dim=emb, num_heads=heads, num_kv_heads=heads,
              head_dim=emb // heads, mlp_dim=int(hf.get('n_inner') or 4 * emb), num_layers=int(hf.get('n_layer', 12)),
              mlp_activations=(_activation(hf.get('activation_function', 'gelu_new'), where),), norm='layer',
              norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-5)), positions='learned', max_positions=int(
                  hf.get('n_positions', 1024)), qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=bool(
                      hf.get('tie_word_embeddings', True)), bos_id=_first(hf.get('bos_token_id', 50256)), eos_id=_first(
                          hf.get('eos_token_id', 50256)), pad_id=_first(hf.get('pad_token_id')))


def decoder_config(hf: Mapping[str, Any], where: str) -> tuple[DecoderConfig, str]:
  """config.json (parsed) -> (DecoderConfig in float32, its architecture name)."""
  arch = architecture(hf, where)
  try:
    fields = _gpt2_fields(hf, where) if arch == GPT2 else _llama_fields(hf, arch, where)
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f'{where}: {arch} config is missing or garbles a field ({type(e).__name__}: {e})') from e
  return DecoderConfig(**fields), arch


def check_config(config: DecoderConfig, implied: DecoderConfig, where: str) -> None:
  """A given config must describe the model config.json describes, field by architecture field."""
  for name in ARCH_FIELDS:
    ours, theirs = getattr(config, name), getattr(implied, name)
    if name == 'max_positions' and config.positions == 'rotary':
      continue  # informational for rotary models
    if ours != theirs:
      raise ConfigError(f'{where}: the checkpoint implies {name}={theirs!r} but the given config has {name}={ours!r}')


def _gpt2_plan(config: DecoderConfig, prefix: str) -> dict[str, Entry]:
  emb, mlp = config.emb_dim, config.mlp_dim
  plan = {
      'token_embedder/embedding': Entry(f'{prefix}wte.weight', (config.vocab_size, emb)),
      'position_embedder/embedding': Entry(f'{prefix}wpe.weight', (config.max_positions, emb)),
  }
  norms = (('pre_self_attention_layer_norm', 'ln_1'), ('pre_mlp_layer_norm', 'ln_2'))
  dense = (('self_attention/out', 'attn.c_proj', emb, emb), ('mlp/wi', 'mlp.c_fc', emb, mlp), ('mlp/wo', 'mlp.c_proj',
                                                                                               mlp, emb))
  for i in range(config.num_layers):
    ours, theirs = f'decoder/layers_{i}', f'{prefix}h.{i}'
    for norm, hf_norm in norms:
      plan[f'{ours}/{norm}/scale'] = Entry(f'{theirs}.{hf_norm}.weight', (emb,))
      plan[f'{ours}/{norm}/bias'] = Entry(f'{theirs}.{hf_norm}.bias', (emb,))
    for k, name in enumerate(('query', 'key', 'value')):
      plan[f'{ours}/self_attention/{name}/kernel'] = Entry(f'{theirs}.attn.c_attn.weight', (emb, emb), part=(k, 3))
      plan[f'{ours}/self_attention/{name}/bias'] = Entry(f'{theirs}.attn.c_attn.bias', (emb,), part=(k, 3))
    for module, hf_module, fan_in, fan_out in dense:
      plan[f'{ours}/{module}/kernel'] = Entry(f'{theirs}.{hf_module}.weight', (fan_in, fan_out))
      plan[f'{ours}/{module}/bias'] = Entry(f'{theirs}.{hf_module}.bias', (fan_out,))
  plan['decoder/decoder_norm/scale'] = Entry(f'{prefix}ln_f.weight', (emb,))
  plan['decoder/decoder_norm/bias'] = Entry(f'{prefix}ln_f.bias', (emb,))
  return plan


def _llama_plan(config: DecoderConfig) -> dict[str, Entry]:
  emb, mlp = config.emb_dim, config.mlp_dim
  q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  plan = {'token_embedder/embedding': Entry('model.embed_tokens.weight', (config.vocab_size, emb))}
  linear = (('self_attention/query', 'self_attn.q_proj', emb, q_out,
             config.qkv_bias), ('self_attention/key', 'self_attn.k_proj', emb, kv_out, config.qkv_bias),
            ('self_attention/value', 'self_attn.v_proj', emb, kv_out,
             config.qkv_bias), ('self_attention/out', 'self_attn.o_proj', q_out, emb,
                                config.out_bias), ('mlp/wi_0', 'mlp.gate_proj', emb, mlp, config.mlp_bias),
            ('mlp/wi_1', 'mlp.up_proj', emb, mlp, config.mlp_bias), ('mlp/wo', 'mlp.down_proj', mlp, emb,
                                                                     config.mlp_bias))
  for i in range(config.num_layers):
    ours, theirs = f'decoder/layers_{i}', f'model.layers.{i}'
    plan[f'{ours}/pre_self_attention_layer_norm/scale'] = Entry(f'{theirs}.input_layernorm.weight', (emb,))
    plan[f'{ours}/pre_mlp_layer_norm/scale'] = Entry(f'{theirs}.post_attention_layernorm.weight', (emb,))
    for module, hf_module, fan_in, fan_out, bias in linear:
      plan[f'{ours}/{module}/kernel'] = Entry(f'{theirs}.{hf_module}.weight', (fan_in, fan_out), transpose=True)
      if bias:
        plan[f'{ours}/{module}/bias'] = Entry(f'{theirs}.{hf_module}.bias', (fan_out,))
  plan['decoder/decoder_norm/scale'] = Entry('model.norm.weight', (emb,))
  return plan


def causal_plan(config: DecoderConfig, arch: str, gpt2_prefix: str = '') -> dict[str, Entry]:
  """{jaxprompt param path (unscanned): Entry} for `config` as `arch` stores it (GPT-2 keys after `gpt2_prefix`)."""
  if config.mlp_activations[1:] != (() if arch == GPT2 else ('linear',)):
    raise ConfigError(f'{arch} runs {"one activation" if arch == GPT2 else "a gated MLP"}; mlp_activations '
                      f'{config.mlp_activations} has no {arch} form')
  plan = _gpt2_plan(config, gpt2_prefix) if arch == GPT2 else _llama_plan(config)
  if not config.tie_word_embeddings:
    plan['decoder/logits_dense/kernel'] = Entry(HEAD_KEY, (config.emb_dim, config.vocab_size), transpose=True)
  return plan
