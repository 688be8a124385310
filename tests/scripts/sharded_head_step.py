"""On 8 devices, mesh (data, model) = 4x2: one compiled train step of a tiny BERT with a P-tuning v2 prefix and a
tagging head (`WithHead`) equals the same step on one device: loss, the prefix and the head after the update."""
import jax
import numpy as np

from jaxprompt.methods.prefix_tuning import p_tuning_v2
from jaxprompt.methods.with_head import WithHead
from jaxprompt.models import families
from jaxprompt.models.heads import HeadConfig
from jaxprompt.runtime import step
from jaxprompt.runtime.optim import adam, make_optimizer
from jaxprompt.runtime.runtime import build_runtime
from jaxprompt.runtime.state import init_train_state
from tests.encoder_helpers import head_batch, tiny

assert jax.device_count() == 8, jax.devices()
config, frozen = tiny()
method = WithHead.for_config(config, p_tuning_v2(config, length=4), HeadConfig('tagging', 3, dropout=0.0))
model = families.build_model(config, method)
optimizer = make_optimizer(adam, 0.05)
batch = head_batch('tagging')
state = init_train_state(jax.jit(method.init)(jax.random.PRNGKey(1), frozen), optimizer.tx, jax.random.PRNGKey(2))
want, want_metrics = jax.jit(lambda s: step.train_step(model, optimizer, s, frozen, batch))(state)

runtime = build_runtime(config, method, None, {'inputs': 8, 'targets': 1}, optimizer=optimizer, model_parallel=2,
                        network=frozen)
got, metrics = runtime.steps.train_step(runtime.steps.place_state(state), runtime.frozen,
                                        runtime.steps.shard_batch(batch))
assert runtime.steps.trainable_shardings['head']['classifier']['kernel'].spec == jax.sharding.PartitionSpec(None, None)
np.testing.assert_allclose(float(metrics['loss']), float(want_metrics['loss']), rtol=1e-5)
for a, b in zip(jax.tree.leaves(got.trainable), jax.tree.leaves(want.trainable)):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
print('OK')
