"""Helpers of the causal-LM tests: tiny random transformers models saved as safetensors folders, batches with right
and left padding, the two hook shapes a method gives a decoder-only network (an input hook inserting prompt rows
in front, a per-layer K/V prefix), and a jitted forward."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.hooks import Hooks, KVPrefix

VOCAB = 96
# The tiny models of the parity tests: every architecture the reader supports, with its distinguishing features.
ARCHS = {
    # GQA (4 query / 2 kv heads), llama3 rope scaling with a smoothed band, q/k/v/o biases, untied head.
    'llama': ('LlamaConfig', 'LlamaForCausalLM',
              dict(
                  num_attention_heads=4, num_key_value_heads=2, attention_bias=True, tie_word_embeddings=False,
                  rope_parameters=dict(rope_type='llama3', rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=64))),
    'mistral': ('MistralConfig', 'MistralForCausalLM',
                dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None, rope_theta=1000.0)),
    # q/k/v biases without an output bias, tied head; saved in shards.
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM',
              dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    'gpt2': ('GPT2Config', 'GPT2LMHeadModel',
             dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)),
}
_LLAMA_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128)


def build_hf(arch: str, folder, seed: int = 0, max_shard_size: str | None = None):
  """A random `arch` model (eval mode, eager attention) saved to `folder` as safetensors; returns the model.

  Every weight is redrawn (norm scales around 1) so that logits are O(1) and a swapped or misread tensor shows.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config_cls, model_cls, fields = ARCHS[arch]
  shape = {} if arch == 'gpt2' else _LLAMA_SHAPE
  config = getattr(transformers, config_cls)(vocab_size=VOCAB, **shape, **fields)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access  (no NaN rows under left padding)
  torch.manual_seed(seed)
  model = randomize(getattr(transformers, model_cls)(config).eval(), seed)
  kwargs = {} if max_shard_size is None else dict(max_shard_size=max_shard_size)
  model.save_pretrained(folder, safe_serialization=True, **kwargs)
  return model


def randomize(model, seed: int):
  """Redraws every weight of a transformers model (norm scales around 1, the rest N(0, 0.2^2)); returns it."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      is_scale = param.ndim == 1 and name.endswith('weight') and any(n in name for n in ('norm', 'ln_', 'LayerNorm'))
      param.copy_(1 + 0.2 * noise if is_scale else 0.2 * noise)
  return model


def padded_batch(seed: int, batch: int = 3, length: int = 7, left: bool = False):
  """(tokens [b, l] int32, valid [b, l] bool): random ids (0 included: a real token), rows of different lengths."""
  rs = np.random.RandomState(seed)
  tokens = rs.randint(0, VOCAB, (batch, length)).astype(np.int32)
  lengths = np.linspace(length, 2, batch).astype(int)
  idx = np.arange(length)[None, :]
  valid = (idx >= length - lengths[:, None]) if left else (idx < lengths[:, None])
  return np.where(valid, tokens, 0).astype(np.int32), valid


def hf_positions(mask: np.ndarray, offset: int = 0) -> np.ndarray:
  """transformers' generate() position ids: the running count of real rows, pads clipped to 0, plus `offset`."""
  return np.maximum(np.cumsum(mask, axis=1) - 1, 0) + offset


def hf_logits(model, tokens=None, mask=None, positions=None, embeds=None, past=None) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  kwargs = dict(attention_mask=torch.tensor(np.asarray(mask, np.int64)))
  if tokens is not None:
    kwargs['input_ids'] = torch.tensor(np.asarray(tokens, np.int64))
  if embeds is not None:
    kwargs['inputs_embeds'] = torch.tensor(np.asarray(embeds))
  if positions is not None:
    kwargs['position_ids'] = torch.tensor(np.asarray(positions, np.int64))
  if past is not None:
    kwargs['cache'] = past
  with torch.no_grad():
    return model(**kwargs).logits.numpy()


class PromptHook(struct.PyTreeNode):
  """An input hook putting the same prompt rows [p, e] in front of every row (PEFT's prompt tuning)."""
  prompt: jax.Array

  def __call__(self, embedded, tokens, segment_ids, *, valid, stack, deterministic):
    del tokens, segment_ids, stack, deterministic
    rows = jnp.broadcast_to(self.prompt.astype(embedded.dtype), (embedded.shape[0],) + self.prompt.shape)
    front = jnp.ones(rows.shape[:2], bool)
    return jnp.concatenate([rows, embedded], axis=1), jnp.concatenate([front, valid], axis=1)


class PrefixHook(struct.PyTreeNode):
  """Per-layer K/V rows [layers, b, p, kv heads, d], every row attended (PEFT's prefix tuning)."""
  key: jax.Array
  value: jax.Array

  def attention_prefix(self, layer, kind):
    del layer, kind
    return KVPrefix(self.key, self.value, jnp.ones(self.key.shape[:2], bool))

  def hidden_states(self, x, layer, stack):
    del layer, stack
    return x


def random_params(config, seed: int = 0) -> dict:
  """Random CausalTransformer params of O(1) activations, drawn in numpy (no compiled init): kernels [in, out] with
  variance 1 / in, embeddings N(0, 1), norm scales around 1, biases small but not zero."""
  shapes = jax.eval_shape(functools.partial(CausalTransformer(config).init, enable_dropout=False),
                          jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  rs = np.random.RandomState(seed)

  def draw(path, leaf):
    name, noise = path[-1].key, rs.normal(size=leaf.shape).astype(np.float32)
    if name == 'scale':
      return 1 + 0.1 * noise
    if name == 'bias':
      return 0.1 * noise
    return noise if name == 'embedding' else noise / np.sqrt(leaf.shape[0])

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes['params']))


@functools.cache
def forward(config):
  """A jitted `(params, tokens, valid, hooks, ...) -> logits` of `CausalTransformer(config)` (one per config)."""
  model = CausalTransformer(config)

  @jax.jit
  def run(params, tokens, valid, hooks=None, positions=None, segment_ids=None):
    return model.apply({'params': params}, tokens, valid=valid, positions=positions, segment_ids=segment_ids,
                       hooks=hooks if hooks is not None else Hooks(), enable_dropout=False)

  return run


def assert_same_decodes(model, reference, frozen, trainable, inputs: dict) -> None:
  """Greedy and 2-beam decodes of `model` equal `reference`'s (the same ids, scores to 1e-4)."""
  for options in (dict(method='sample', temperature=0.0), dict(method='beam', num_decodes=2, alpha=0.0)):
    decode = lambda m, options=options: jax.jit(functools.partial(m.predict_batch, return_all_decodes=True, **options))(
        frozen, trainable, inputs)
    (decodes, scores), (want, want_scores) = decode(model), decode(reference)
    np.testing.assert_array_equal(decodes, want)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
