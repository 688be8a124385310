"""Decoders against hand-rolled numpy references on a toy cached "model" (no T5 needed).

The toy's next-token logits depend on the current token, its position, a hash of the whole fed history kept
in the cache, a per-example "encoder" row and a batch-free `cached_bias` leaf, so a decoder that expands,
flattens or gathers the cache wrongly, or feeds the wrong token/index, produces different decodes.
"""
import functools
import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.models import decoding

EOS = 1
HASH = 7


class Toy:
  """Cached toy decoder. `offset=1` stores the cache like scanned layers ([layers=1, batch, ...])."""

  def __init__(self, seed, vocab=10, length=7, batch=2, offset=0, eos_bias=0.0):
    rs = np.random.RandomState(seed)
    self.vocab, self.length, self.batch, self.offset = vocab, length, batch, offset
    self.trans = (rs.randn(vocab, vocab) * 2).astype(np.float32)
    self.trans[:, EOS] += np.float32(eos_bias)
    self.pos = rs.randn(length + 2, vocab).astype(np.float32)
    self.hist = rs.randn(HASH, vocab).astype(np.float32)
    self.enc = (rs.randn(batch, vocab) * 2).astype(np.float32)
    self.bias = rs.randn(1, vocab).astype(np.float32)
    self.check_index = True

  def tables(self):
    """The batch-free model weights, passed to `toy_step` as jit arguments so compiles are shared."""
    return dict(trans=self.trans, pos=self.pos, hist=self.hist, check=np.bool_(self.check_index))

  def cache(self, prefix_rows=None, frozen=False):
    """Empty cache (scalar index), or one holding each row of `prefix_rows` (index = row length)."""
    keys = np.zeros((self.batch, self.length + 2), np.int32)
    index = np.int32(0)
    if prefix_rows is not None:
      index = np.array([len(r) for r in prefix_rows], np.int32)
      for b, row in enumerate(prefix_rows):
        keys[b, :len(row)] = row
    keys, enc = jnp.asarray(keys), jnp.asarray(self.enc)
    if self.offset:
      keys, enc = keys[None], enc[None]
    cache = {
        'decoder': {
            'layers_0': {'self_attention': {'cached_key': keys, 'cache_index': jnp.asarray(index)}, 'encoded': enc},
            'relpos_bias': {'cached_bias': jnp.asarray(self.bias)}
        }
    }
    return flax.core.freeze(cache) if frozen else cache

  def tokens_to_logits(self, state):
    return toy_step(self.tables(), state)

  def ref_logits(self, b, fed):
    """numpy logits after feeding `fed` = [BOS, t1, ..., ti] to example b."""
    i = len(fed) - 1
    h = sum((j + 1) * t for j, t in enumerate(fed)) % HASH
    return self.trans[fed[-1]] + self.pos[i] + self.hist[h] + self.enc[b] + self.bias[0]


def toy_step(tables, state):
  """The toy's `tokens_to_logits`: writes the current token into the cache, returns [n, vocab] logits."""
  c = state.cache['decoder']
  attn = c['layers_0']['self_attention']
  vocab = tables['trans'].shape[0]
  assert c['relpos_bias']['cached_bias'].shape == (1, vocab)  # batch-free leaves stay untouched
  keys, enc = attn['cached_key'], c['layers_0']['encoded']
  scanned = keys.ndim == 3
  if scanned:
    keys, enc = keys[0], enc[0]
  n = keys.shape[0]
  idx = jnp.broadcast_to(attn['cache_index'], (n,))
  cur = state.cur_token[:, 0]
  slots = jnp.arange(keys.shape[1])[None, :]
  keys = jnp.where(slots == idx[:, None], cur[:, None], keys)
  h = jnp.sum(keys * (slots + 1) * (slots <= idx[:, None]), axis=1) % HASH
  logits = jnp.asarray(tables['trans'])[cur] + jnp.asarray(tables['pos'])[idx] + jnp.asarray(tables['hist'])[h]
  logits = logits + enc + c['relpos_bias']['cached_bias']
  # The loop index the decoder reports must be the cache position (NaN logits otherwise).
  logits = jnp.where(jnp.all(state.cur_index == idx) | ~tables['check'], logits, jnp.nan)
  new_attn = {'cached_key': keys[None] if scanned else keys, 'cache_index': attn['cache_index'] + 1}
  return logits, {
      'decoder': {
          'layers_0': {'self_attention': new_attn, 'encoded': c['layers_0']['encoded']}, 'relpos_bias': c['relpos_bias']
      }
  }


@functools.partial(jax.jit, static_argnames=('decoder', 'options'))
def _run(decoder, options, tables, inputs, cache, arrays):
  return getattr(decoding, decoder)(inputs, cache, functools.partial(toy_step, tables), EOS, **dict(options), **arrays)


def decode(decoder, toy, inputs, cache=None, **kwargs):
  """Runs `decoding.<decoder>` on the toy under a shared jit: array kwargs are traced, the rest static."""
  arrays = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
  options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
  return _run(decoder, options, toy.tables(), inputs, toy.cache() if cache is None else cache, arrays)


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.sum(np.exp(x - x.max())))


def ref_greedy(toy, inputs, max_steps=None):
  """Argmax loop per example with t5x's prompt forcing, EOS stop and zero padding."""
  seqs, scores = np.zeros(inputs.shape, np.int32), np.zeros(len(inputs))
  for b, row in enumerate(inputs):
    limit = len(row) if max_steps is None else min(len(row), int(np.sum(row != 0)) + max_steps)
    fed = [0]
    for pos in range(1, limit + 1):
      if pos < len(row) and row[pos] != 0:
        tok = int(row[pos])
      else:
        lsm = log_softmax(toy.ref_logits(b, fed))
        tok = int(np.argmax(lsm))
        scores[b] += lsm[tok]
      seqs[b, pos - 1] = tok
      if tok == EOS and not (pos < len(row) and row[pos] != 0):
        break
      fed.append(tok)
  return seqs, scores


def ref_beam(toy, inputs, beams, alpha):
  """t5x beam search per example written plainly (lists, stable sorts, float32 score arithmetic)."""
  f32, neg = np.float32, np.float32(-1e7)
  length = inputs.shape[1]
  max_len = length + 1
  out_seqs, out_scores = [], []
  for b, row in enumerate(inputs):
    live = [(f32(0.0) if k == 0 else neg, [0] * max_len) for k in range(beams)]  # only slot 0 starts live
    fin = [(neg, [0] * max_len, False)] * beams
    for t in range(length):
      best_live = f32(live[-1][0] / f32(((5.0 + max_len) / 6.0)**alpha))
      worst = min(s for s, _, _ in fin)
      if all((worst if flag else neg) > best_live for _, _, flag in fin):
        break
      cands = []  # candidate id = slot * vocab + token, as in t5x's flattened top-k
      for k, (lp, seq) in enumerate(live):
        lsm = log_softmax(toy.ref_logits(b, seq[:t + 1])).astype(np.float32)
        cands += [(f32(lp + lsm[v]), k * toy.vocab + v, seq, v) for v in range(toy.vocab)]
      top = sorted(cands, key=lambda c: (-c[0], c[1]))[:2 * beams]
      forced = int(row[min(t + 1, length - 1)])
      new = []
      for j, (lp, _, seq, v) in enumerate(top):
        if forced:
          lp, v = (f32(0.0) if j == 0 else neg), forced
        new.append((lp, seq[:t + 1] + [v] + [0] * (max_len - t - 2), v == EOS))
      alive = sorted([(f32(lp + (neg if done else 0)), j, s) for j, (lp, s, done) in enumerate(new)], key=lambda c:
                     (-c[0], c[1]))[:beams]
      live = [(lp, s) for lp, _, s in reversed(alive)]
      bp = f32(((5.0 + t + 1) / 6.0)**alpha)
      pool = fin + [(f32(f32(lp / bp) + (0 if done else neg)), s, done) for lp, s, done in new]
      fin = [pool[j] for j in reversed(sorted(range(len(pool)), key=lambda j: (-pool[j][0], j))[:beams])]
    if any(flag for _, _, flag in fin):
      out_seqs.append([s[1:] for _, s, _ in fin])
      out_scores.append([s for s, _, _ in fin])
    else:
      out_seqs.append([s[1:] for _, s in live])
      out_scores.append([lp for lp, _ in live])
  return np.array(out_seqs), np.array(out_scores, np.float64)


def prompts(batch, length, rows):
  x = np.zeros((batch, length), np.int32)
  for b, r in enumerate(rows):
    x[b, 1:1 + len(r)] = r
  return jnp.asarray(x)


# ---------------------------------------------------------------------------------------------------------
# Greedy / temperature sampling.
# ---------------------------------------------------------------------------------------------------------

GREEDY = dict(temperature=0.0, rescale_log_probs=False)


@pytest.mark.parametrize('seed,eos_bias,rows', [(0, 1.0, [[], []]), (1, 0.0, [[], []]), (2, 1.0, [[5, 3], []]),
                                                (2, 3.0, [[1, 4], [6]])])  # the last forces an EOS
def test_greedy_matches_argmax_loop(seed, eos_bias, rows):
  toy = Toy(seed, eos_bias=eos_bias)
  inputs = prompts(2, 7, rows)
  seqs, scores = decode('temperature_sample', toy, inputs, **GREEDY)
  want_seqs, want_scores = ref_greedy(toy, np.asarray(inputs))
  np.testing.assert_array_equal(seqs[:, 0], want_seqs)
  np.testing.assert_allclose(scores[:, 0], want_scores, atol=1e-4)
  if eos_bias:  # the cases are built so that some decode stops early and is zero padded
    assert any(EOS in r and r[-1] == 0 for r in want_seqs.tolist())
  # With rescaled log probs a zero-temperature decode is certain; t5x's default topk=1 is greedy too.
  seqs0, scores0 = decode('temperature_sample', toy, inputs, temperature=0.0)
  seqs1, _ = decode('temperature_sample', toy, inputs, decode_rng=jax.random.PRNGKey(seed))
  np.testing.assert_array_equal(seqs0, seqs)
  np.testing.assert_array_equal(scores0, 0.0)
  np.testing.assert_array_equal(seqs1, seqs)


def test_greedy_eager_and_cache_layouts_agree():
  """Outside jit, with a scanned-layer cache (offset 1) or a FrozenDict cache, and with several decodes."""
  inputs = prompts(2, 7, [[], [4]])
  base = Toy(4, eos_bias=1.0)
  want, want_scores = ref_greedy(base, np.asarray(inputs))
  seqs, scores = decoding.temperature_sample(inputs, base.cache(), base.tokens_to_logits, EOS, **GREEDY)
  np.testing.assert_array_equal(seqs[:, 0], want)
  np.testing.assert_allclose(scores[:, 0], want_scores, atol=1e-4)
  scanned = Toy(4, offset=1, eos_bias=1.0)
  for toy, cache in [(scanned, scanned.cache()), (base, base.cache(frozen=True))]:
    seqs, _ = decode('temperature_sample', toy, inputs, cache, num_decodes=3, cache_offset=toy.offset, **GREEDY)
    for k in range(3):
      np.testing.assert_array_equal(seqs[:, k], want)


def test_max_decode_steps_counts_after_prompt():
  toy = Toy(6, eos_bias=-20.0)  # never EOS: only the limit stops it
  inputs = prompts(2, 7, [[3, 5], []])
  seqs, scores = decode('temperature_sample', toy, inputs, max_decode_steps=3, **GREEDY)
  want, want_scores = ref_greedy(toy, np.asarray(inputs), max_steps=3)
  np.testing.assert_array_equal(seqs[:, 0], want)
  np.testing.assert_allclose(scores[:, 0], want_scores, atol=1e-4)
  np.testing.assert_array_equal(seqs[0, 0, 5:], 0)
  np.testing.assert_array_equal(seqs[1, 0, 3:], 0)
  unlimited, _ = ref_greedy(toy, np.asarray(inputs))
  assert np.any(unlimited[:, 3:] != 0)  # so the limit is what zeroed those positions
  limited, _ = decode('temperature_sample', toy, inputs, max_decode_steps=6, max_decode_steps_hard_limit=3, **GREEDY)
  np.testing.assert_array_equal(limited, seqs)


def test_prefilled_cache_matches_forced_prompt():
  """Starting at initial_index from a cache holding the prompt equals teacher-forcing it from scratch."""
  toy = Toy(7, eos_bias=0.5)
  rows = [[4, 6], [7]]
  inputs = prompts(2, 7, rows)
  want, want_scores = decode('temperature_sample', toy, inputs, num_decodes=2, **GREEDY)
  cache = toy.cache(prefix_rows=[[0] + r[:-1] for r in rows])  # all but the last prompt token
  got, got_scores = decode('temperature_sample', toy, inputs, cache, num_decodes=2,
                           initial_index=np.array([len(r) for r in rows], np.int32), **GREEDY)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def _fixed_distribution(probs):
  logits = jnp.log(jnp.asarray(probs, jnp.float32))

  def tokens_to_logits(state):
    return jnp.broadcast_to(logits, (state.cur_token.shape[0], len(probs))), state.cache

  return tokens_to_logits


PROBS = np.array([0.02, 0.03, 0.45, 0.25, 0.15, 0.10])


@pytest.mark.parametrize('kwargs,support', [(dict(topk=2), [2, 3]), (dict(topk=0, topp=0.6), [2, 3]),
                                            (dict(topk=0, topp=0.8), [2, 3, 4]),
                                            (dict(topk=0, temperature=0.5), [0, 1, 2, 3, 4, 5])])
def test_sampling_support_frequencies_and_scores(kwargs, support):
  n = 2000
  inputs = jnp.zeros((2, 1), jnp.int32)
  seqs, log_probs = decoding.temperature_sample(inputs, {}, _fixed_distribution(PROBS), EOS, num_decodes=n,
                                                decode_rng=jax.random.PRNGKey(0), **kwargs)
  tokens = np.asarray(seqs[:, :, 0]).ravel()
  want = PROBS**(1 / kwargs.get('temperature', 1.0))
  want = np.where(np.isin(np.arange(len(PROBS)), support), want, 0.0)
  want /= want.sum()
  assert set(tokens.tolist()) <= set(support)
  freq = np.bincount(tokens, minlength=len(PROBS)) / tokens.size
  np.testing.assert_allclose(freq, want, atol=0.03)
  np.testing.assert_allclose(np.asarray(log_probs).ravel(), np.log(want[tokens]), atol=1e-5)  # rescaled
  assert np.all(np.diff(np.asarray(log_probs), axis=1) >= 0)  # best last


def test_sampling_is_deterministic_given_rng_and_rescaling_off():
  toy = Toy(8, eos_bias=1.0)
  inputs = prompts(2, 7, [[], [3]])
  run = functools.partial(decode, 'temperature_sample', toy, inputs, num_decodes=4, topk=0, rescale_log_probs=False)
  a, sa = run(decode_rng=jax.random.PRNGKey(1))
  b, sb = run(decode_rng=jax.random.PRNGKey(1))
  c, _ = run(decode_rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sa, sb)
  assert not np.array_equal(a, c)
  for bi, k in itertools.product(range(2), range(4)):  # raw-logit score of each sampled continuation
    row, fed, want = np.asarray(a[bi, k]), [0], 0.0
    for pos, tok in enumerate(row.tolist(), start=1):
      forced = pos < 7 and np.asarray(inputs)[bi, pos] != 0
      if not forced:
        want += log_softmax(toy.ref_logits(bi, fed))[tok]
      if tok == EOS:
        break
      fed.append(tok)
    np.testing.assert_allclose(sa[bi, k], want, atol=1e-4)


def test_per_example_temperature_and_callbacks():
  toy = Toy(9, eos_bias=1.0)
  inputs = prompts(2, 7, [[], []])
  greedy, _ = ref_greedy(toy, np.asarray(inputs))
  seqs, _ = decode('temperature_sample', toy, inputs, num_decodes=8, topk=0, temperature=np.array([0.0, 3.0],
                                                                                                  np.float32))
  for k in range(8):
    np.testing.assert_array_equal(seqs[0, k], greedy[0])
  assert len({tuple(r) for r in np.asarray(seqs[1]).tolist()}) > 1  # the copies of an example differ
  banned = int(greedy[0, 0])
  seqs, log_probs = decode('temperature_sample', toy, inputs, num_decodes=8, topk=0, temperature=3.0,
                           logit_callback_fn=lambda logits, state: logits.at[:, banned].set(-1e9),
                           state_callback_fn=lambda state: state.replace(log_prob=jnp.zeros_like(state.log_prob)))
  assert banned not in np.asarray(seqs).ravel().tolist()
  np.testing.assert_array_equal(log_probs, 0.0)  # the state callback also sees the final state


def test_traced_temperature_topk_topp():
  """Temperature / topk / topp given as traced values take t5x's dynamic (lax.cond) path."""
  toy = Toy(10, eos_bias=1.0)
  inputs = prompts(2, 7, [[], [2]])
  rng = jax.random.PRNGKey(3)
  static = decode('temperature_sample', toy, inputs, num_decodes=3, topk=3, temperature=0.7, decode_rng=rng)
  traced = decode('temperature_sample', toy, inputs, num_decodes=3, topk=np.int32(3), temperature=np.float32(0.7),
                  decode_rng=rng)
  np.testing.assert_array_equal(traced[0], static[0])
  np.testing.assert_allclose(traced[1], static[1], atol=1e-6)
  greedy, _ = ref_greedy(toy, np.asarray(inputs))
  zero = decode('temperature_sample', toy, inputs, num_decodes=2, topk=0, topp=np.float32(0.0),
                temperature=np.float32(0.0), decode_rng=rng)
  np.testing.assert_array_equal(zero[0][:, 0], greedy)


# ---------------------------------------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('beams,seed,eos_bias,rows,alpha',
                         [(1, 11, 1.0, [[], []], 0.6), (2, 12, 2.0, [[], [5]], 0.6), (4, 13, 1.5, [[], []], 0.6),
                          (4, 14, 0.0, [[3, 1], []], 0.0), (4, 15, -20.0, [[], [6]], 0.6), (3, 16, 4.0, [[], []], 1.2)])
def test_beam_search_matches_reference(beams, seed, eos_bias, rows, alpha):
  toy = Toy(seed, eos_bias=eos_bias)
  inputs = prompts(2, 7, rows)
  got, scores = decode('beam_search', toy, inputs, num_decodes=beams, alpha=alpha)
  want, want_scores = ref_beam(toy, np.asarray(inputs), beams, alpha)
  assert got.shape == (2, beams, 7) and scores.shape == (2, beams)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(np.asarray(scores), axis=1) >= 0)  # best last


def test_beam_search_equals_brute_force_without_pruning():
  """8 beams over vocab {0, EOS, 2} and 3 steps keep every prefix: the finished set is every sequence."""
  toy = Toy(17, vocab=3, length=3)
  inputs = jnp.zeros((2, 3), jnp.int32)
  got, scores = decode('beam_search', toy, inputs, num_decodes=8, alpha=0.6)
  for b in range(2):
    brute = []
    for n in range(3):
      for body in itertools.product([0, 2], repeat=n):
        seq, fed, logp = list(body) + [EOS], [0], 0.0
        for tok in seq:
          logp += log_softmax(toy.ref_logits(b, fed))[tok]
          fed.append(tok)
        # the brevity penalty counts the output tokens including EOS
        brute.append((logp / ((5.0 + len(seq)) / 6.0)**0.6, seq + [0] * (3 - len(seq))))
    brute.sort(key=lambda c: c[0])
    np.testing.assert_array_equal(got[b, 1:], [s for _, s in brute])
    np.testing.assert_allclose(scores[b, 1:], [s for s, _ in brute], rtol=1e-5, atol=1e-5)
    assert scores[b, 0] < -1e6  # the eighth slot holds no real finished sequence


def test_beam1_without_eos_is_greedy_with_raw_score():
  """No finished beam: the live beam comes back with its unpenalised log prob."""
  toy = Toy(18, eos_bias=-1e4)
  inputs = prompts(2, 7, [[], [4]])
  got, scores = decode('beam_search', toy, inputs, num_decodes=1)
  want, want_scores = ref_greedy(toy, np.asarray(inputs))
  np.testing.assert_array_equal(got[:, 0], want)
  np.testing.assert_allclose(scores[:, 0], want_scores, atol=1e-4)


def test_beam_cache_layouts_and_prefilled_cache():
  rows = [[4, 6], [7, 2]]
  inputs = prompts(2, 7, rows)
  base = Toy(19, eos_bias=1.5)
  want, want_scores = ref_beam(base, np.asarray(inputs), 4, 0.6)
  scanned = Toy(19, offset=1, eos_bias=1.5)
  for toy, cache in [(scanned, scanned.cache()), (base, base.cache(frozen=True))]:
    got, scores = decode('beam_search', toy, inputs, cache, cache_offset=toy.offset)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  base.check_index = False  # from a prefilled cache the loop index restarts at 0 while the cache does not
  cache = base.cache(prefix_rows=[[0] + r[:-1] for r in rows])
  got, scores = decode('beam_search', base, inputs, cache, initial_index=np.array([len(r) for r in rows]))
  real = want_scores > -1e6
  assert 0 < real.sum() < real.size  # both real finished beams and empty slots occur
  np.testing.assert_array_equal(np.asarray(got)[real], want[real])
  np.testing.assert_allclose(np.asarray(scores)[real], want_scores[real], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(scores, np.where(real, scores, -1e7))
  # Like t5x, the prompt is re-attached to every slot, empty ones included.
  for b, k in zip(*np.nonzero(~real)):
    np.testing.assert_array_equal(got[b, k], np.asarray(inputs)[b, 1:].tolist() + [0])


def test_beam_search_max_decode_len_and_utilities():
  toy = Toy(20, eos_bias=-1.0)
  inputs = jnp.zeros((2, 7), jnp.int32)
  got, scores = decode('beam_search', toy, inputs, max_decode_len=3)
  assert got.shape == (2, 4, 3)
  full, _ = ref_beam(toy, np.asarray(inputs), 4, 0.6)
  short, short_scores = ref_beam(toy, np.zeros((2, 3), np.int32), 4, 0.6)  # as if the inputs were 3 long
  np.testing.assert_array_equal(got, short)
  np.testing.assert_allclose(scores, short_scores, rtol=1e-5, atol=1e-5)
  assert not np.array_equal(full[:, :, :3], short)
  np.testing.assert_allclose(decoding.brevity_penalty(0.6, 4), (9 / 6)**0.6, rtol=1e-6)
  x = jnp.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(decoding.flat_batch_beam_expand(x, 2), [[0, 1, 2]] * 2 + [[3, 4, 5]] * 2)


# ---------------------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------------------


def test_errors_name_the_culprit():
  toy = Toy(21, length=4)
  inputs = jnp.zeros((2, 4), jnp.int32)
  sample = functools.partial(decoding.temperature_sample, inputs, toy.cache(), toy.tokens_to_logits, EOS)
  with pytest.raises(ConfigError, match=r'topk \(2\) and topp \(0.9\)'):
    sample(topk=2, topp=0.9)
  with pytest.raises(ConfigError, match='max_decode_steps=5 exceeds the decode length 4'):
    sample(max_decode_steps=5)
  with pytest.raises(ConfigError, match=r'temperature must be a scalar or \[batch=2\], got shape \(3,\)'):
    sample(temperature=jnp.ones(3))
  with pytest.raises(ConfigError, match='num_decodes must be a positive int, got 0'):
    decoding.beam_search(inputs, toy.cache(), toy.tokens_to_logits, EOS, num_decodes=0)
  with pytest.raises(ConfigError, match=r'decoder inputs must be \[batch, length\], got shape \(4,\)'):
    decoding.beam_search(inputs[0], toy.cache(), toy.tokens_to_logits, EOS)
  with pytest.raises(ConfigError, match=r'logits \[batch\*beams=8, vocab\], got \(2, 6\)'):
    decoding.beam_search(inputs, toy.cache(), lambda s: (jnp.zeros((2, 6)), s.cache), EOS)
  with pytest.raises(ConfigError, match=r"\['decoder'\]\['layers_0'\]\['self_attention'\]\['cache_index'\] is a "
                     'scalar'):
    sample(initial_index=jnp.array([1, 1]), num_decodes=2)
  with pytest.raises(ConfigError, match=r'initial_index must be \[batch=2\], got shape \(3,\)'):
    decoding.beam_search(inputs, toy.cache(prefix_rows=[[0], [0]]), toy.tokens_to_logits, EOS,
                         initial_index=jnp.array([1, 1, 1]))
