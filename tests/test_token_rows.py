"""Where each row's tokens sit after an input hook (`jaxprompt.models.token_rows`): rows of several prompt lengths
report their starts (their own prompt's length; a causal stream's widest), per-token values go to those rows and
come back, one start for every row is a pad and a slice, and a prompt not in front of the tokens is refused in one
line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.methods.row_prompts import gather_rows
from jaxprompt.models import token_rows


def _hook(combines=('prefix',) * 3):
  """Task ids [2, 0, 1] over prompts of 1, 4 and 0 rows (a 4-row table): rows start at 0, 1 and 4."""
  table = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2) + 0.5
  return gather_rows(table, np.asarray([2, 0, 1]), [1, 4, 0], list(combines))


@jax.jit
def _layout(embedded, tokens, valid):
  """What the encoder makes of rows under `_hook`: (starts, token rows back, token types placed and read back,
  given positions placed, the causal stream's starts, the int path's place and take of the tokens)."""
  hook = _hook()
  out, _ = hook(embedded, tokens, None, valid=valid, stack='encoder', deterministic=True)
  starts = token_rows.token_starts(hook, 5, out.shape[1], 'encoder')
  types = token_rows.place(tokens % 2 + 1, starts, 9)
  positions = token_rows.positions_from(jnp.broadcast_to(jnp.arange(5), (3, 5)), starts, 9)
  same = [token_rows.place(tokens, s, 9) for s in (4, jnp.full((3,), 4))]
  return (starts, token_rows.take(out, starts, 5), types, token_rows.take(types, starts, 5), positions,
          token_rows.token_starts(hook, 5, 9, 'decoder'), same, [token_rows.take(p, 4, 5) for p in same])


def test_each_rows_tokens_sit_behind_its_own_prompt_and_a_prompt_not_in_front_is_refused():
  tokens = np.arange(15, dtype=np.int32).reshape(3, 5) + 3
  valid = np.arange(5)[None] < np.asarray([[5], [3], [1]])
  embedded = np.stack([tokens, -tokens], -1).astype(np.float32)  # [3, 5, 2]: each token's own values
  starts, back, types, types_back, positions, causal, same, same_back = _layout(embedded, tokens, valid)
  np.testing.assert_array_equal(starts, [0, 1, 4])
  np.testing.assert_array_equal(back, embedded)  # the token rows, wherever the hook put them
  np.testing.assert_array_equal(types_back, tokens % 2 + 1)
  np.testing.assert_array_equal((np.asarray(types) > 0).sum(1), [5, 5, 5])  # prompt rows and unused slots: 0
  np.testing.assert_array_equal(positions[:, :5], np.tile(np.arange(5), (3, 1)))
  np.testing.assert_array_equal(positions[2, 4:], [4, 5, 6, 7, 8])  # 4 prompt rows, then its tokens from 4
  np.testing.assert_array_equal(causal, [4, 4, 4])  # a causal stream leaves the unused slots in front
  np.testing.assert_array_equal(same[0], same[1])  # one start for every row: the int path equals the per-row one
  np.testing.assert_array_equal(same_back[0], tokens)
  assert token_rows.token_starts(None, 5, 9, 'encoder') == 4
  hook = _hook(('prefix', 'suffix_after_eos', 'prefix'))
  with pytest.raises(ConfigError, match=r"TaskRows puts some prompt between or after the tokens.*combine='prefix'"):
    token_rows.token_starts(hook, 5, 9, 'encoder')
