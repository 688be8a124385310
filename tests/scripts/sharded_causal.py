"""On 8 devices, mesh (data, model) = 4x2: a Hugging Face causal LM (GQA, argv[1]) read straight into its shards
equals the one-host read, parameters follow the logical rules (kv heads over 'model'), and the sharded forward
equals one device's logits, with a per-layer K/V prefix too."""
import functools
import sys

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from jaxprompt.checkpoints.hf_causal import load_hf_causal
from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.hooks import Hooks
from jaxprompt.parallel import partitioning
from tests.causal_helpers import PrefixHook, padded_batch

assert jax.device_count() == 8, jax.devices()
params, config = load_hf_causal(sys.argv[1])  # numpy leaves: the single-device reference
assert config.num_kv_heads == 2 and config.num_heads == 4
model = CausalTransformer(config)
tokens, valid = padded_batch(seed=0, batch=8, left=True)
rows = np.random.RandomState(1).normal(size=(2, config.num_layers, 1, 3, config.num_kv_heads,
                                             config.head_dim)).astype(np.float32)
prefix = Hooks(decoder_layers=PrefixHook(rows[0], rows[1]))


def apply(p, t, v, h):
  return model.apply({'params': p}, t, valid=v, hooks=h, enable_dropout=False)


expected = {
    name: np.asarray(jax.jit(apply)(params, tokens, valid, h)) for name, h in (('plain', Hooks()), ('prefix', prefix))
}

mesh = partitioning.create_mesh(model_parallel=2)
rules = partitioning.prompt_logical_axis_rules()
init = functools.partial(model.init, enable_dropout=False)
_, shardings = partitioning.shardings_for(init, mesh, rules, jax.random.PRNGKey(0), tokens)
param_shardings = flatten_dict(shardings['params'])
layer = ('decoder', 'layers_0', 'self_attention')
want = {
    ('token_embedder', 'embedding'): P('model', None),
    layer + ('query', 'kernel'): P(None, 'model'),
    layer + ('key', 'kernel'): P(None, 'model'),
    layer + ('key', 'bias'): P('model'),
    layer + ('out', 'kernel'): P('model', None),
    ('decoder', 'layers_1', 'mlp', 'wi_1', 'kernel'): P(None, 'model'),
    ('decoder', 'decoder_norm', 'scale'): P(None),
    ('decoder', 'logits_dense', 'kernel'): P(None, 'model'),
}
for path, spec in want.items():
  assert param_shardings[path].spec == spec, (path, param_shardings[path].spec, spec)

# The reader places every tensor in its shards; the values are the one-host read's.
sharded, _ = load_hf_causal(sys.argv[1], shardings=shardings['params'])
reference = flatten_dict(params)
for path, leaf in flatten_dict(sharded).items():
  assert leaf.sharding.spec == param_shardings[path].spec, path
  np.testing.assert_array_equal(np.asarray(leaf), reference[path])
key = sharded['decoder']['layers_0']['self_attention']['key']['kernel']
assert {s.data.shape for s in key.addressable_shards} == {(32, 8)}  # 2 kv heads x 8 split over model=2

batch = partitioning.batch_sharding(mesh)
fwd = jax.jit(apply, in_shardings=(shardings['params'], batch, batch, None))
placed = (jax.device_put(tokens, batch), jax.device_put(valid, batch))
with partitioning.use_mesh(mesh, rules):
  for name, hooks in (('plain', Hooks()), ('prefix', prefix)):
    logits = fwd(sharded, *placed, hooks)
    np.testing.assert_allclose(np.asarray(logits), expected[name], atol=1e-5)
    assert logits.sharding.spec[0] == 'data', logits.sharding
  hlo = fwd.lower(sharded, *placed, prefix).compile().as_text()
assert 'all-reduce' in hlo or 'reduce-scatter' in hlo or 'all-gather' in hlo  # model parallelism is real
assert np.abs(expected['prefix'] - expected['plain'])[valid].max() > 1e-2  # the prefix is in effect
print('OK')
