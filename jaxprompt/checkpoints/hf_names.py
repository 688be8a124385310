"""The one map between Hugging Face T5 and T5X names, read both ways: `huggingface.py` reads an HF folder through it,
`hf_writer.py` writes one. Tensor names (`t5x_plan`), config.json fields (`HF_FIELDS`) and activations
(`activations` / `feed_forward_proj`).

Tensors (torch `Linear` weights are `[out, in]`, so every kernel is transposed):
  shared.weight                                            <-> token_embedder/embedding        [vocab, embed]
  {stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
                                                           <-> {stack}/relpos_bias/rel_embedding [heads, buckets]
  encoder.block.i.layer.0 {layer_norm, SelfAttention.{q,k,v,o}}  <-> encoder/layers_i/{pre_attention_layer_norm,
                                                                    attention/{query,key,value,out}}
  encoder.block.i.layer.1 {layer_norm, DenseReluDense.*}    <-> encoder/layers_i/{pre_mlp_layer_norm, mlp/*}
  decoder.block.i.layer.0 / .1 (EncDecAttention) / .2       <-> decoder/layers_i/{self_attention,
                                                                encoder_decoder_attention, mlp} + their norms
  {stack}.final_layer_norm.weight                          <-> {stack}/{stack}_norm/scale
  lm_head.weight [vocab, embed]                            <-> decoder/logits_dense/kernel     [embed, vocab]
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jaxprompt.errors import CheckpointError
from jaxprompt.models.config import T5Config

# Copies of `shared.weight` (tied in HF) and a cross-attention bias table old HF versions saved but never used.
IGNORED = frozenset({
    'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
    'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight'
})
HEAD_KEY = 'lm_head.weight'
EMBEDDING_KEY = 'shared.weight'
# HF activation names (transformers ACT2FN) -> jaxprompt's; HF 'gelu' and 'gelu_python' are the exact erf GELU.
# Writing, a jaxprompt activation takes the first HF name listed for it.
ACTIVATIONS = {
    'relu': 'relu', 'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu', 'gelu_fast': 'gelu',
    'silu': 'silu', 'swish': 'silu', 'gelu_python': 'gelu_exact', 'linear': 'linear'
}
# transformers' historical special case: 'gated-gelu' runs 'gelu_new' (T5 1.1's tanh GELU), not 'gelu'.
_GATED_GELU = 'gated-gelu'
# jaxprompt field -> (config.json key, HF default when the key is absent).
HF_FIELDS = {
    'vocab_size': ('vocab_size', 32128), 'emb_dim': ('d_model', 512), 'num_heads': ('num_heads', 8), 'head_dim':
        ('d_kv', 64), 'mlp_dim': ('d_ff', 2048), 'num_encoder_layers': ('num_layers', 6), 'relpos_num_buckets':
            ('relative_attention_num_buckets', 32), 'relpos_max_distance': ('relative_attention_max_distance', 128),
    'layer_norm_epsilon': ('layer_norm_epsilon', 1e-6)
}

# ------------------------------------------------------------------------------------------- activations


def activations(ffp: str, where: str) -> tuple[str, ...]:
  """HF `feed_forward_proj` ('relu', 'gated-gelu', 'gated-silu'...) -> jaxprompt `mlp_activations`."""
  parts = ffp.split('-')
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated'):
    raise CheckpointError(f"{where}: feed_forward_proj {ffp!r} is neither '<act>' nor 'gated-<act>'")
  act = 'gelu_new' if ffp == _GATED_GELU else parts[-1]
  if act not in ACTIVATIONS:
    raise CheckpointError(f"{where}: feed_forward_proj {ffp!r} uses activation {act!r}, which jaxprompt's T5 "
                          f'does not implement (supported: {", ".join(sorted(ACTIVATIONS))})')
  return (ACTIVATIONS[act], 'linear') if len(parts) == 2 else (ACTIVATIONS[act],)


def feed_forward_proj(mlp_activations: Sequence[str]) -> str:
  """jaxprompt `mlp_activations` -> the HF `feed_forward_proj` that `activations` reads back as the same."""
  acts = tuple(mlp_activations)
  gated = len(acts) == 2 and acts[1] == 'linear'
  if len(acts) != 1 and not gated:
    raise CheckpointError(f'mlp_activations {acts} has no Hugging Face T5 form: HF runs one activation (wi) or '
                          "act(wi_0) * wi_1 ('gated-<act>'), so only (act,) and (act, 'linear') convert")
  if gated and acts[0] == 'gelu':
    return _GATED_GELU
  # 'gated-gelu' would run gelu_new (above), so a gated exact GELU takes its other name.
  names = [hf for hf, ours in ACTIVATIONS.items() if ours == acts[0] and not (gated and f'gated-{hf}' == _GATED_GELU)]
  return f'gated-{names[0]}' if gated else names[0]


# ------------------------------------------------------------------------------------------------ tensors


@dataclasses.dataclass(frozen=True)
class Entry:
  """One T5X parameter: its HF tensor, the T5X shape the config implies, and how to convert it.

  `part` = (k, n): the k-th of n equal slices of the (transposed) tensor's last axis (GPT-2's fused q/k/v).
  """
  key: str
  shape: tuple[int, ...]
  transpose: bool = False
  factor: float | None = None
  part: tuple[int, int] | None = None


_ENCODER_SUBLAYERS = (('pre_attention_layer_norm', 'attention', 'SelfAttention'), ('pre_mlp_layer_norm', 'mlp',
                                                                                   'DenseReluDense'))
_DECODER_SUBLAYERS = (('pre_self_attention_layer_norm', 'self_attention', 'SelfAttention'),
                      ('pre_cross_attention_layer_norm', 'encoder_decoder_attention',
                       'EncDecAttention'), ('pre_mlp_layer_norm', 'mlp', 'DenseReluDense'))


def t5x_plan(config: T5Config, head_key: str | None = None, head_factor: float | None = None) -> dict[str, Entry]:
  """{T5X param path (unscanned): Entry} for `config`, in HF's order; `head_key` names the logits_dense source
  if any (reading an HF file) or target (writing one)."""
  emb, joined, mlp = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  wis = ('wi',) if len(config.mlp_activations) == 1 else tuple(f'wi_{i}' for i in range(len(config.mlp_activations)))
  plan = {'token_embedder/embedding': Entry(EMBEDDING_KEY, (config.vocab_size, emb))}
  stacks = (('encoder', config.num_encoder_layers, _ENCODER_SUBLAYERS), ('decoder', config.num_decoder_layers,
                                                                         _DECODER_SUBLAYERS))
  for stack, num_layers, sublayers in stacks:
    plan[f'{stack}/relpos_bias/rel_embedding'] = Entry(
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
        (config.num_heads, config.relpos_num_buckets), transpose=True)
    for i in range(num_layers):
      for k, (norm, module, hf_module) in enumerate(sublayers):
        ours, theirs = f'{stack}/layers_{i}', f'{stack}.block.{i}.layer.{k}'
        plan[f'{ours}/{norm}/scale'] = Entry(f'{theirs}.layer_norm.weight', (emb,))
        if module == 'mlp':
          for wi in wis:
            plan[f'{ours}/mlp/{wi}/kernel'] = Entry(f'{theirs}.{hf_module}.{wi}.weight', (emb, mlp), True)
          plan[f'{ours}/mlp/wo/kernel'] = Entry(f'{theirs}.{hf_module}.wo.weight', (mlp, emb), True)
        else:
          for name, hf_name in (('query', 'q'), ('key', 'k'), ('value', 'v')):
            plan[f'{ours}/{module}/{name}/kernel'] = Entry(f'{theirs}.{hf_module}.{hf_name}.weight', (emb, joined),
                                                           True)
          plan[f'{ours}/{module}/out/kernel'] = Entry(f'{theirs}.{hf_module}.o.weight', (joined, emb), True)
    plan[f'{stack}/{stack}_norm/scale'] = Entry(f'{stack}.final_layer_norm.weight', (emb,))
  if head_key is not None:
    plan['decoder/logits_dense/kernel'] = Entry(head_key, (emb, config.vocab_size), True, head_factor)
  return plan
