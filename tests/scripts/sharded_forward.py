"""On 8 devices, mesh (data, model) = 4x2: sharded init + forward equals one device; params sharded by rules;
with per-layer K/V prefixes (heads split over 'model') too."""
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import PartitionSpec as P

from jaxprompt.models.config import get_config
from jaxprompt.models.hooks import Hooks, KVPrefix
from jaxprompt.models.t5 import Transformer
from jaxprompt.parallel import partitioning

assert jax.device_count() == 8, jax.devices()
data = dict(np.load(sys.argv[1]))
params = unflatten_dict({tuple(k[6:].split('/')): v for k, v in data.items() if k.startswith('param/')})
batch = [np.tile(data[k], (4, 1)) for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')]
model = Transformer(get_config('t5x_tiny'))
reference = jax.jit(lambda p, h, *b: model.apply({'params': p}, *b, hooks=h, enable_dropout=False))  # one device
expected = reference(params, None, *batch)

mesh = partitioning.create_mesh(model_parallel=2)
assert dict(mesh.shape) == {'data': 4, 'model': 2}
rules = partitioning.prompt_logical_axis_rules()
init = functools.partial(model.init, enable_dropout=False)
abstract, shardings = partitioning.shardings_for(init, mesh, rules, jax.random.PRNGKey(0), *batch)
param_shardings = shardings['params']

want = {
    ('token_embedder', 'embedding'): P('model', None),
    ('encoder', 'layers_0', 'attention', 'query', 'kernel'): P(None, 'model'),
    ('encoder', 'layers_0', 'attention', 'out', 'kernel'): P('model', None),
    ('encoder', 'layers_1', 'mlp', 'wi_0', 'kernel'): P(None, 'model'),
    ('decoder', 'layers_0', 'mlp', 'wo', 'kernel'): P('model', None),
    ('encoder', 'relpos_bias', 'rel_embedding'): P('model', None),
    ('decoder', 'decoder_norm', 'scale'): P(None),
    ('decoder', 'logits_dense', 'kernel'): P(None, 'model'),
}
flat_shardings = flatten_dict(param_shardings)
for path, spec in want.items():
  assert flat_shardings[path].spec == spec, (path, flat_shardings[path].spec, spec)

# Really sharded: init under jit with those output shardings, then place the reference params the same way.
with partitioning.use_mesh(mesh, rules):
  initialised = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0), *batch)
for path, leaf in flatten_dict(initialised['params']).items():
  leaf = getattr(leaf, 'value', leaf)
  assert leaf.sharding.spec == flat_shardings[path].spec, path
placed = jax.device_put(params, param_shardings)
emb = placed['token_embedder']['embedding']
assert {s.data.shape for s in emb.addressable_shards} == {(64, 32)}  # vocab 128 split over model=2.

batch_sharding = partitioning.batch_sharding(mesh)
sharded_batch = [jax.device_put(b, batch_sharding) for b in batch]
fwd = jax.jit(lambda p, *b: model.apply({'params': p}, *b, enable_dropout=False),
              in_shardings=(param_shardings, batch_sharding, batch_sharding, batch_sharding))
with partitioning.use_mesh(mesh, rules):
  compiled = fwd.lower(placed, *sharded_batch).compile()
  logits = compiled(placed, *sharded_batch)
hlo = compiled.as_text()
np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
np.testing.assert_allclose(np.asarray(logits)[:2], data['logits'], atol=1e-5)
assert logits.sharding.spec[0] == 'data', logits.sharding
assert 'all-reduce' in hlo or 'reduce-scatter' in hlo or 'all-gather' in hlo  # Model parallelism is real.


class Prefixes(struct.PyTreeNode):
  """The same K/V rows [layers, 1, p, h, d] for every attention kind of every layer (shared by the batch)."""
  key: jax.Array
  value: jax.Array

  def attention_prefix(self, layer, kind):
    return KVPrefix(self.key, self.value, jnp.ones(self.key.shape[:2], bool))

  def hidden_states(self, x, layer, stack):
    return x


rows = np.random.RandomState(0).normal(size=(2, 2, 1, 3, 4, 8)).astype(np.float32)  # k/v, layers, 1, p, h, d
prefixes = Prefixes(rows[0], rows[1])
hooks = Hooks(encoder_layers=prefixes, decoder_layers=prefixes)
expected = reference(params, hooks, *batch)
fwd_hooks = jax.jit(lambda p, h, *b: model.apply({'params': p}, *b, hooks=h, enable_dropout=False),
                    in_shardings=(param_shardings, None, batch_sharding, batch_sharding, batch_sharding))
with partitioning.use_mesh(mesh, rules):
  logits = fwd_hooks(placed, hooks, *sharded_batch)
np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
assert np.abs(np.asarray(expected)[:2] - data['logits']).max() > 1e-3  # the prefixes are in effect
print('OK')
