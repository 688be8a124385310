"""On 8 devices, mesh (data, model) = 4x2: sharded init + forward equals one device; params sharded by rules."""
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import PartitionSpec as P

from jaxprompt.parallel import partitioning
from jaxprompt.models.config import get_config
from jaxprompt.models.t5 import Transformer

assert jax.device_count() == 8, jax.devices()
data = dict(np.load(sys.argv[1]))
params = unflatten_dict({tuple(k[6:].split('/')): v for k, v in data.items() if k.startswith('param/')})
batch = [np.tile(data[k], (4, 1)) for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')]
model = Transformer(get_config('t5x_tiny'))
expected = model.apply({'params': params}, *batch, enable_dropout=False)  # Single device reference.

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
  logits = fwd(placed, *sharded_batch)
  hlo = fwd.lower(placed, *sharded_batch).compile().as_text()
np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
np.testing.assert_allclose(np.asarray(logits)[:2], data['logits'], atol=1e-5)
assert logits.sharding.spec[0] == 'data', logits.sharding
assert 'all-reduce' in hlo or 'reduce-scatter' in hlo or 'all-gather' in hlo  # Model parallelism is real.
print('OK')
