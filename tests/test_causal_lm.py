"""CausalTransformer on its own: the config's checks and seam properties, the published sizes, scanned + remat
layers, packed rows, KV-cache decoding (prefill + one-token steps, and `decoding.temperature_sample` from a
prefilled cache) against the full forward, and 8 simulated devices against one."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding
from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.decoder_config import DecoderConfig, get_decoder_config
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.rotary import RopeScaling
from jaxprompt.models.scan import stack_layers
from tests.causal_helpers import PrefixHook, PromptHook, forward, padded_batch, random_params
from tests.helpers import REPO, run_with_devices

CFG = get_decoder_config('causal_test_tiny')


@pytest.fixture(scope='module')
def params():
  return random_params(CFG)


def _hooks(kinds: str, batch: int, seed: int = 0) -> Hooks:
  """Hooks with a 2-row prompt ('prompt' in kinds) and / or a 3-row K/V prefix ('prefix' in kinds)."""
  rs = np.random.RandomState(seed)
  prompt = PromptHook(rs.normal(size=(2, CFG.emb_dim)).astype(np.float32)) if 'prompt' in kinds else None
  rows = rs.normal(size=(2, CFG.num_layers, batch, 3, CFG.num_kv_heads, CFG.head_dim)).astype(np.float32)
  return Hooks(inputs=prompt, decoder_layers=PrefixHook(rows[0], rows[1]) if 'prefix' in kinds else None)


@pytest.mark.parametrize('changes, culprit', [
    (dict(num_kv_heads=3), 'num_kv_heads=3 must divide num_heads=4'),
    (dict(norm='batch'), "norm='batch' is not one of 'rms', 'layer'"),
    (dict(positions='alibi'), "positions='alibi'"),
    (dict(head_dim=7), 'head_dim=7 must be even'),
    (dict(positions='learned'), 'rope_scaling applies to'),
    (dict(mlp_activations=('tanh',)), "unknown activation 'tanh'"),
    (dict(remat_policy='all'), "remat_policy='all'"),
    (dict(rope_scaling={'rope_type': 'yarn', 'factor': 2.0}), "rope_type 'yarn' is not supported"),
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0}), "needs numeric 'factor'"),
    (dict(vocab_size=0), 'vocab_size must be positive'),
])
def test_config_refuses_bad_fields_in_one_line(changes, culprit):
  with pytest.raises(ConfigError, match=culprit) as raised:
    CFG.replace(**changes)
  assert '\n' not in str(raised.value)


def test_config_seam_properties_and_names():
  assert DecoderConfig.family == 'decoder_only' and CFG.input_stack == 'decoder'
  assert CFG.attention_kinds == ('decoder_self',) and CFG.stack_depth('decoder') == CFG.num_layers == 2
  with pytest.raises(ConfigError, match="one stack, 'decoder'; there is no 'encoder' stack"):
    CFG.stack_depth('encoder')
  assert DecoderConfig(num_heads=8).num_kv_heads == 8
  scaled = CFG.replace(rope_scaling=dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192))
  assert scaled.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192) == get_decoder_config('llama3_2_1b').rope_scaling
  with pytest.raises(ConfigError, match="unknown decoder-only model config 'llama3_2_1B'.*llama3_2_1b"):
    get_decoder_config('llama3_2_1B')


@pytest.mark.parametrize('name, count', [
    ('gpt2_small', 124_439_808),
    ('llama3_2_1b', 1_235_814_400),
    ('llama3_1_8b', 8_030_261_248),
    ('qwen2_5_0_5b', 494_032_768),
    ('mistral_7b', 7_248_023_552),
])
def test_named_sizes_have_the_published_parameter_counts(name, count):
  config = get_decoder_config(name, scan_layers=True)
  shapes = jax.eval_shape(functools.partial(CausalTransformer(config).init, enable_dropout=False),
                          jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes['params'])) == count


def test_scanned_remat_layers_equal_unrolled_with_both_hooks(params):
  tokens, valid = padded_batch(seed=1, left=True)
  hooks = _hooks('prompt prefix', len(tokens))
  want = forward(CFG)(params, tokens, valid, hooks)
  got = forward(CFG.replace(scan_layers=True, remat_policy='full'))(stack_layers(params), tokens, valid, hooks)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_packed_rows_equal_separate_rows(params):
  """Two sequences in one row (segment ids, positions restarting) give each one's own logits."""
  rs = np.random.RandomState(2)
  first, second = rs.randint(0, CFG.vocab_size, 3), rs.randint(0, CFG.vocab_size, 4)
  packed = np.concatenate([first, second])[None].astype(np.int32)
  segments, positions = np.array([[1, 1, 1, 2, 2, 2, 2]]), np.array([[0, 1, 2, 0, 1, 2, 3]])
  got = np.asarray(forward(CFG)(params, packed, None, segment_ids=segments, positions=positions))[0]
  apart = np.zeros((2, 4), np.int32)
  apart[0, :3], apart[1] = first, second
  want = np.asarray(forward(CFG)(params, apart, apart >= 0))  # causal: the pad after `first` changes nothing before
  np.testing.assert_allclose(got, np.concatenate([want[0, :3], want[1]]), rtol=1e-5, atol=1e-5)


@functools.cache
def _decoder():
  """Jitted (init cache, prefill, one-token step) of CausalTransformer(CFG)."""
  model = CausalTransformer(CFG)

  def call(params, cache, tokens, valid, hooks, **kwargs):
    variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
    logits, new = model.apply(variables, tokens, valid=valid, hooks=hooks, decode=True, enable_dropout=False,
                              mutable=['cache'], **kwargs)
    return logits, new['cache']

  init = jax.jit(lambda p, t, v, h, rows: call(p, None, t, v, h, max_decode_length=rows)[1], static_argnums=4)
  return init, jax.jit(functools.partial(call, prefill=True)), jax.jit(call)


@pytest.mark.parametrize('kind', ['prefix', pytest.param('prompt', marks=pytest.mark.slow)])
def test_prefill_then_steps_equal_the_full_forward(params, kind):
  """A left-padded prompt prefilled, then one token at a time: every real row's logits as the full forward's.

  With a K/V prefix the steps number their tokens after it; an inserted prompt is written by the prefill.
  """
  tokens, valid = padded_batch(seed=3, left=True)
  hooks = _hooks(kind, len(tokens))
  init, prefill, step = _decoder()
  inserted = 2 if kind == 'prompt' else 0
  cache = init(params, tokens, valid, hooks, tokens.shape[1] + inserted)
  logits, cache = prefill(params, cache, tokens[:, :4], valid[:, :4], hooks)
  np.testing.assert_array_equal(cache['cache_index'], 4 + inserted)
  outputs = [logits]
  for t in range(4, tokens.shape[1]):
    logits, cache = step(params, cache, tokens[:, t:t + 1], valid[:, t:t + 1], hooks)
    outputs.append(logits)
  want = np.asarray(forward(CFG)(params, tokens, valid, hooks))
  rows = np.concatenate([np.ones((len(tokens), inserted), bool), valid], axis=1)
  np.testing.assert_allclose(np.concatenate(outputs, axis=1)[rows], want[rows], rtol=1e-5, atol=1e-5)


def test_greedy_sampling_from_a_prefilled_cache_equals_recomputed_argmax(params):
  """`decoding.temperature_sample` with `initial_index`, t5x's layout: the cache holds the prompt but its last
  token, which the first step feeds; the result is the argmax chain of full forwards (here with a K/V prefix,
  and the shapes of the prefill test, so the jitted calls are shared)."""
  steps, rows = 3, 7
  prompts = np.random.RandomState(4).randint(1, CFG.vocab_size, (3, rows + 1 - steps)).astype(np.int32)  # no id 0
  batch, n = prompts.shape
  hooks = _hooks('prefix', batch)
  _, _, step = _decoder()
  create_and_prefill = jax.jit(lambda p, t, h: CausalTransformer(
      CFG).apply({'params': p}, t, hooks=h, decode=True, prefill=True, max_decode_length=rows, enable_dropout=False,
                 mutable=['cache'])[1]['cache'])  # one call: the prefill creates the cache
  cache = create_and_prefill(params, prompts[:, :-1], hooks)

  def tokens_to_logits(state):
    logits, new_cache = step(params, state.cache, state.cur_token, jnp.ones_like(state.cur_token, bool), hooks)
    return logits[:, -1], new_cache

  inputs = np.pad(prompts, ((0, 0), (1, steps - 1)))  # slot 0 stands for BOS, as in t5x's decoder-only inputs
  got, _ = decoding.temperature_sample(inputs, cache, tokens_to_logits, eos_id=CFG.vocab_size + 1, temperature=0.0,
                                       initial_index=np.full((batch,), n, np.int32))
  want = np.pad(prompts, ((0, 0), (0, steps)))
  for k in range(steps):  # causal: the logits of row n - 1 + k ignore the rows after it
    logits = forward(CFG)(params, want[:, :rows], np.ones((batch, rows), bool), hooks)
    want[:, n + k] = np.argmax(np.asarray(logits)[:, n - 1 + k], axis=-1)
  np.testing.assert_array_equal(np.asarray(got)[:, 0], want)


def test_bad_calls_fail_in_one_line(params):
  model = CausalTransformer(CFG)
  tokens, valid = padded_batch(seed=5)

  def apply(tokens, **kwargs):  # traced only: the checks fire while tracing, nothing needs compiling
    return jax.eval_shape(functools.partial(model.apply, {'params': params}, enable_dropout=False, **kwargs), tokens)

  with pytest.raises(ConfigError, match='prefill=True writes the decoding cache: pass decode=True too'):
    apply(tokens, prefill=True)
  with pytest.raises(ConfigError, match='incremental decoding needs scan_layers=False'):
    jax.eval_shape(
        functools.partial(CausalTransformer(CFG.replace(scan_layers=True)).apply, decode=True, mutable=['cache']),
        {'params': stack_layers(params)}, tokens)
  with pytest.raises(ConfigError, match='changed packed inputs from 7 to 9 positions'):
    apply(tokens, segment_ids=np.ones_like(tokens), hooks=_hooks('prompt', len(tokens)))
  wide = Hooks(decoder_layers=PrefixHook(np.zeros((2, 1, 3, 4, 8), np.float32), np.zeros((2, 1, 3, 4, 8), np.float32)))
  with pytest.raises(ConfigError, match='KVPrefix rows carry 4 heads x 8 but this attention has 2 key/value heads'):
    apply(tokens, hooks=wide)
  _, cache = apply(tokens, valid=valid, decode=True, mutable=['cache'])
  with pytest.raises(ConfigError, match='decoding takes one token per row, got 2'):
    jax.eval_shape(functools.partial(model.apply, decode=True, mutable=['cache']),
                   {'params': params, 'cache': cache['cache']}, tokens[:, :2])


@pytest.mark.slow
def test_sharded_load_and_forward_equal_single_device(tmp_path):
  """8 devices, mesh 4 x 2: the reader places each tensor in its shards; the sharded forward equals one device."""
  from tests.causal_helpers import build_hf  # pylint: disable=g-import-not-at-top  (imports torch)
  build_hf('llama', tmp_path)
  out = run_with_devices(REPO / 'tests' / 'scripts' / 'sharded_causal.py', 8, str(tmp_path))
  assert out.strip().endswith('OK')
