"""Every tuning method on decoder-only causal LMs: a tiny random Llama (grouped-query attention, llama3 rope, q/k/v
biases) and GPT-2 (learned positions, LayerNorm, biases) read from transformers' safetensors. Each method overfits
eight examples with the frozen weights bitwise unchanged; prefixes are sized by the model's key/value heads and
kinds; the prefix init is what the frozen layer computes; a prompt bank serves each row as its task alone
(shorter prompts and prefixes included); cached decoding through per-layer hooks equals recomputation; what a
causal LM cannot take is one clear error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.checkpoints.hf_causal import load_hf_causal
from jaxprompt.data.causal import to_causal_features
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import (
    multitask,
    p_tuning,
    per_layer_prompts,
    prefix_init,
    prefix_tuning,
    prompt_bank,
    prompt_tuning,
)
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim
from tests.causal_helpers import build_hf
from tests.helpers import assert_trees_equal
from tests.method_helpers import train

pytest.importorskip('torch')
ARCHS = ('llama', 'gpt2')


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """{arch: (params, config, eos)}: transformers' tiny random models read back; eos is a token the random head can
  express (as the T5 method tests pick their targets)."""
  out = {}
  for seed, arch in enumerate(ARCHS):
    folder = tmp_path_factory.mktemp(arch)
    build_hf(arch, folder, seed=seed)
    params, config = load_hf_causal(folder)
    out[arch] = (params, config, _expressible(params, config)[2])
  return out


def _expressible(params, config) -> list[int]:
  """The three token ids whose output-layer columns are longest: targets a prompt can steer the head to."""
  head = params['token_embedder']['embedding'].T if config.tie_word_embeddings else params['decoder']['logits_dense'][
      'kernel']
  return [int(v) for v in np.argsort(-np.linalg.norm(np.asarray(head), axis=0))[:3]]


def _batch(params, config, count=8):
  """`count` distinct random inputs, each followed by the same expressible target (loss on it alone)."""
  inputs = [list(np.random.RandomState(i).randint(6, config.vocab_size, 6)) for i in range(count)]
  batch = to_causal_features(inputs, [_expressible(params, config)] * count, {'inputs': 6, 'targets': 3})
  return dict(batch, task_ids=np.arange(count, dtype=np.int32) % 2)


FACTORIES = {  # (factory, its keyword arguments, Adam's learning rate; P-tuning's encoder learns slower)
    'prompt_tuning': (prompt_tuning.prompt_tuning, dict(length=10), 0.1),
    'p_tuning': (p_tuning.p_tuning, dict(length=10, encoder='mlp', hidden=32), 0.01),
    'per_layer_prompts': (per_layer_prompts.per_layer_prompts, dict(length=10), 0.1),
    'prefix_tuning': (prefix_tuning.prefix_tuning, dict(length=10, hidden=32), 0.01),
    'p_tuning_v2': (prefix_tuning.p_tuning_v2, dict(length=10), 0.1),
    'multitask_prompts': (multitask.multitask_prompts, dict(length=10, tasks=['a', 'b']), 0.1),
    'multitask_prompt_tuning': (multitask.multitask_prompt_tuning, dict(length=10, tasks=['a', 'b'], rank=2), 0.1),
}


def _slow_unless(arch, name):
  fast = (arch, name) == ('llama', 'prompt_tuning')  # the one representative; every other pair is slow
  return pytest.param(arch, name, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize('arch,name', [_slow_unless(a, n) for a in ARCHS for n in sorted(FACTORIES)])
def test_every_method_overfits_eight_examples_with_frozen_weights_untouched(models, arch, name):
  params, config, eos = models[arch]
  factory, kwargs, learning_rate = FACTORIES[name]
  model = build_model(config, factory(config, eos, **kwargs), LossConfig(reduction='mean'), eos_id=eos)
  frozen = jax.tree.map(jnp.asarray, params)
  before = jax.tree.map(np.array, params)
  batch = _batch(params, config)
  steps = 60 if name == 'p_tuning' else 40
  state, history = train(model, frozen, batch, steps, optim.make_optimizer(optim.adam, learning_rate=learning_rate))
  assert history[-1] <= 0.2 * history[0], (history[0], history[-1])
  assert float(jax.jit(model.loss_fn)(frozen, state.trainable, batch)[1]['token_accuracy']) >= 0.9
  assert_trees_equal(frozen, before)


# ------------------------------------------------------------------------------------ prefixes on a causal LM


def test_prefix_kinds_and_rows_come_from_the_model(models):
  params, config, eos = models['llama']
  assert config.num_kv_heads < config.num_heads  # grouped-query attention
  method = prefix_tuning.prefix_tuning(config, eos, length=3, projection=False)
  assert method.kinds == ('decoder_self',) and prefix_tuning.p_tuning_v2(config, eos).kinds == ('decoder_self',)
  rows = method.init(jax.random.PRNGKey(0), params)['decoder_self']
  assert rows['key'].shape == (config.num_layers, 3, config.num_kv_heads, config.head_dim)
  assert method.abstract(None)['decoder_self']['key'].names == ('layers', 'prompt', 'kv_heads', 'kv')
  with pytest.raises(
      ConfigError, match=r"attention kind 'cross' is not in this model, whose attentions a prefix may "
      r'join are decoder_self') as raised:
    prefix_tuning.PrefixTuning.for_config(config, length=2, kinds=('decoder_self', 'cross'))
  assert '\n' not in str(raised.value)
  t5 = get_config('t5x_tiny')
  assert prefix_tuning.prefix_tuning(t5).kinds == ('encoder_self', 'decoder_self', 'cross')
  assert prefix_tuning.p_tuning_v2(t5).kinds == ('encoder_self', 'decoder_self')


@pytest.mark.parametrize('arch', ARCHS)
def test_prefix_init_is_what_the_frozen_layer_caches_for_a_token(models, arch):
  """Layer 0's initial rows for token x are the key / value the network caches for x alone at position 0 (its
  norm with GPT-2's bias, the projections' biases, un-rotated keys; GPT-2 adds position 0's embedding)."""
  params, config, _ = models[arch]
  ids = np.array([3, 40, 77])
  table = np.asarray(params['token_embedder']['embedding'])
  x = table[ids] + (np.asarray(params['position_embedder']['embedding'])[0] if 'position_embedder' in params else 0)
  x = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True))
  rows = prefix_init.frozen_rows(jnp.asarray(x), params, 'decoder_self', 1)
  module, tokens = build_model(config).module, jnp.asarray(ids)[:, None]
  call = lambda cache, **kw: module.apply({'params': params, **cache}, tokens, decode=True, enable_dropout=False,
                                          mutable=['cache'], **kw)[1]
  cached = call(call({}), prefill=True)['cache']['decoder']['layers_0']['self_attention']
  for part in ('key', 'value'):
    want = np.asarray(cached[f'cached_{part}'])[:, 0].reshape(len(ids), -1)  # [tokens, kv heads * head_dim]
    # Up to the norms' epsilon: the init normalises unit-RMS rows, the network the raw embedding.
    np.testing.assert_allclose(np.asarray(rows[part])[0], want, atol=5e-4, rtol=0)


# ------------------------------------------------------------------------------------ a prompt bank


def _single(config, params, eos, name, seed):
  """A trained-looking method of each kind a bank serves, with random parameters."""
  kind, length = name.split('_')
  if kind == 'prompt':
    method = prompt_tuning.prompt_tuning(config, eos, length=int(length))
  else:
    method = prefix_tuning.prefix_tuning(config, eos, length=int(length), projection=False, initializer='normal')
  return method, method.init(jax.random.PRNGKey(seed), params)


# GPT-2 logits only: its mixed-bank rank classification and decoding are test_prompt_once_bank.py's (the 23 s of
# the three calls here went to the suite's budget).
@pytest.mark.parametrize('arch,calls', [('llama', 1),
                                        pytest.param('llama', 3, marks=pytest.mark.slow),
                                        pytest.param('gpt2', 1, marks=pytest.mark.slow)])
def test_a_bank_serves_each_row_as_its_task_alone(models, arch, calls):
  """Prompts of 2 and 4 rows and prefixes of 3 and 1 rows in one batch: each row's logits (and with calls=3 its
  rank scores and greedy decode) equal its task run alone (a shorter prompt's unused slots sit in front, a
  shorter prefix's positions count its own rows)."""
  params, config, eos = models[arch]
  names = ['prompt_2', 'prefix_3', 'prompt_4', 'prefix_1']
  methods = {n: _single(config, params, eos, n, i) for i, n in enumerate(names)}
  bank, tree = prompt_bank.build_bank(methods, config, eos)
  batch = dict(_batch(params, config, count=4), task_ids=np.arange(4, dtype=np.int32))
  inputs = {k: batch[k] for k in ('decoder_input_tokens', 'decoder_input_mask', 'task_ids')}
  args = (batch, dict(inputs, candidates=np.array([[10, eos, 0], [20, 30, eos]], np.int32)),
          dict(inputs, decoder_target_tokens=np.zeros((4, 3), np.int32)))[:calls]
  got = [f(params, tree, a) for f, a in zip(_jitted(build_model(config, bank, eos_id=eos)), args)]
  for row, name in enumerate(names):
    method, trainable = methods[name]
    alone = _jitted(build_model(config, method, eos_id=eos))
    for served, fn, arg in zip(got, alone, args):
      want = fn(params, trainable, {k: v if k == 'candidates' else v[row:row + 1] for k, v in arg.items()})
      np.testing.assert_allclose(served[row], want[0], atol=1e-4, rtol=0)


def _jitted(model):
  """The model's jitted logits, rank classification (of the batch's 'candidates') and greedy decoding."""
  rank = lambda frozen, trainable, batch: model.rank_classify(frozen, trainable, batch, batch['candidates'])
  greedy = lambda frozen, trainable, batch: model.predict_batch(frozen, trainable, batch, method='sample', temperature=
                                                                0.0)[0]
  return jax.jit(model.logits), jax.jit(rank), jax.jit(greedy)


# ------------------------------------------------------------------------------------ decoding


def _greedy_by_recomputation(model, frozen, trainable, inputs, mask, steps, eos):
  """Greedy continuations computed with a whole forward pass per token (no cache)."""
  out = np.zeros((len(inputs), 0), np.int32)
  logits_fn = jax.jit(model.logits)
  width = inputs.shape[1] + steps  # one shape for every step: one compilation
  for _ in range(steps):
    rows = [list(x[m > 0]) + list(o) + [0] for x, m, o in zip(inputs, mask, out)]
    batch = to_causal_features(rows, None, {'inputs': width, 'targets': 0})
    logits = np.asarray(logits_fn(frozen, trainable, batch))
    last = batch['decoder_input_mask'].sum(1) - 2  # the position before the placeholder
    out = np.concatenate([out, logits[np.arange(len(inputs)), last].argmax(-1)[:, None]], axis=1)
  return out


@pytest.mark.parametrize('name', ['per_layer_prompts', pytest.param('p_tuning_v2', marks=pytest.mark.slow)])
def test_cached_greedy_decoding_through_layer_hooks_equals_recomputation(models, name):
  """Per-layer prompts act at the prefill's prompt rows and leave the one-token steps alone; a prefix shifts
  every step's position."""
  params, config, eos = models['llama']
  factory, kwargs, _ = FACTORIES[name]
  model = build_model(config, factory(config, eos, **kwargs), eos_id=eos)
  trainable = model.method.init(jax.random.PRNGKey(3), params)
  inputs = np.array([[7, 0, 12, 40, 3], [9, 22, 0, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
  batch = {'decoder_input_tokens': inputs, 'decoder_input_mask': mask, 'decoder_target_tokens': np.zeros((2, 4))}
  decodes = np.asarray(_jitted(model)[2](params, trainable, batch))
  want = _greedy_by_recomputation(model, params, trainable, inputs, mask, 4, eos)
  for got, row in zip(decodes, want):
    n = list(row).index(eos) + 1 if eos in row else len(row)
    np.testing.assert_array_equal(got[:n], row[:n])


# ------------------------------------------------------------------------------------ refusals


def test_a_causal_lm_takes_its_prompt_in_front(models):
  params, config, eos = models['gpt2']
  for factory, kwargs in ((prompt_tuning.prompt_tuning, {}), (p_tuning.p_tuning, {}), (multitask.multitask_prompts,
                                                                                       dict(tasks=['a']))):
    with pytest.raises(
        PromptError, match=r"a causal LM takes its prompt in front of the tokens \(combine='prefix'\)"
        r".*combine='suffix_after_eos'") as raised:
      factory(config, eos, combine='suffix_after_eos', **kwargs)
    assert str(raised.value).splitlines()[0].endswith("combine='suffix_after_eos' is for encoder-decoder models")
  method = prompt_tuning.PromptTuning(length=2, embed_dim=config.emb_dim, combine='prefix_after_bos')
  with pytest.raises(PromptError, match="combine='prefix_after_bos'"):
    build_model(config, method).logits(params, method.init(jax.random.PRNGKey(0), params), _batch(params, config, 2))
