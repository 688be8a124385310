"""On 8 devices, mesh (data, model) = 4x2: a Hugging Face BERT (argv[1]) read straight into its shards equals the
one-host read, parameters follow the logical rules, and the sharded forward (hidden states and pooled output) equals
one device's, with a per-layer K/V prefix too."""
import functools
import sys

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from jaxprompt.checkpoints.hf_encoder import load_hf_encoder
from jaxprompt.models.bert import BertEncoder
from jaxprompt.models.hooks import Hooks
from jaxprompt.parallel import partitioning
from tests.causal_helpers import PrefixHook

assert jax.device_count() == 8, jax.devices()
params, config = load_hf_encoder(sys.argv[1])  # numpy leaves: the single-device reference
model = BertEncoder(config)
rs = np.random.RandomState(0)
valid = np.arange(7)[None, :] < rs.randint(2, 8, (8, 1))
tokens = np.where(valid, rs.randint(3, config.vocab_size, valid.shape), 0).astype(np.int32)
types = np.where(valid, rs.randint(0, 2, valid.shape), 0).astype(np.int32)
rows = rs.normal(size=(2, config.num_layers, 1, 3, config.num_heads, config.head_dim)).astype(np.float32)
prefix = Hooks(encoder_layers=PrefixHook(rows[0], rows[1]))


def apply(p, t, v, y, h):
  return model.apply({'params': p}, t, valid=v, token_types=y, hooks=h, enable_dropout=False)


expected = {
    name: jax.jit(apply)(params, tokens, valid, types, h) for name, h in (('plain', Hooks()), ('prefix', prefix))
}

mesh = partitioning.create_mesh(model_parallel=2)
rules = partitioning.prompt_logical_axis_rules()
_, shardings = partitioning.shardings_for(functools.partial(model.init, enable_dropout=False), mesh, rules,
                                          jax.random.PRNGKey(0), tokens)
param_shardings = flatten_dict(shardings['params'])
layer = ('encoder', 'layers_0')
want = {
    ('token_embedder', 'embedding'): P('model', None),
    ('position_embedder', 'embedding'): P(None, None),
    layer + ('attention', 'query', 'kernel'): P(None, 'model'),
    layer + ('attention', 'key', 'bias'): P('model'),
    layer + ('attention', 'out', 'kernel'): P('model', None),
    layer + ('mlp', 'wi', 'kernel'): P(None, 'model'),
    layer + ('mlp_layer_norm', 'scale'): P(None),
    ('pooler', 'kernel'): P(None, 'model'),
}
for path, spec in want.items():
  assert param_shardings[path].spec == spec, (path, param_shardings[path].spec, spec)

sharded, _ = load_hf_encoder(sys.argv[1], shardings=shardings['params'])
reference = flatten_dict(params)
for path, leaf in flatten_dict(sharded).items():
  assert leaf.sharding.spec == param_shardings[path].spec, path
  np.testing.assert_array_equal(np.asarray(leaf), reference[path])

batch = partitioning.batch_sharding(mesh)
fwd = jax.jit(apply, in_shardings=(shardings['params'], batch, batch, batch, None))
placed = [jax.device_put(a, batch) for a in (tokens, valid, types)]
with partitioning.use_mesh(mesh, rules):
  for name, hooks in (('plain', Hooks()), ('prefix', prefix)):
    hidden, pooled = fwd(sharded, *placed, hooks)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(expected[name][0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(expected[name][1]), atol=1e-5)
    assert hidden.sharding.spec[0] == 'data', hidden.sharding
  hlo = fwd.lower(sharded, *placed, prefix).compile().as_text()
assert 'all-reduce' in hlo or 'reduce-scatter' in hlo or 'all-gather' in hlo  # model parallelism is real
assert np.abs(np.asarray(expected['prefix'][0]) - np.asarray(expected['plain'][0]))[valid].max() > 1e-2
print('OK')
