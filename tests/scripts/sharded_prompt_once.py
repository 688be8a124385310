"""On 8 devices, mesh (data, model) = 4x2: a causal LM's prompt computed once per batch (batch 1 beside a batch
split over 'data', grouped-query K/V heads split over 'model') gives the single-device naive path's loss, prompt
gradient and rank-classification scores, unscanned and under scan + remat."""
import functools

import jax
import numpy as np

from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models import scan
from jaxprompt.models.decoder_config import get_decoder_config
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.parallel import partitioning
from jaxprompt.runtime.compiled import ShardedSteps
from tests.helpers import assert_close_to_scale
from tests.method_helpers import causal_batch

assert jax.device_count() == 8
config = get_decoder_config('causal_test_tiny')
method = PromptTuning(length=6, embed_dim=config.emb_dim, eos_id=5)
naive = DecoderOnlyModel(config, method, eos_id=5, prompt_once=False)
frozen = jax.tree.map(np.asarray, naive.init_params(jax.random.PRNGKey(0)))
prompt = jax.tree.map(np.asarray, method.init(jax.random.PRNGKey(1), frozen))
batch = causal_batch(batch=8, vocab=config.vocab_size)
inputs = {k: batch[k] for k in ('decoder_input_tokens', 'decoder_input_mask')}
candidates = np.array([[17, 5, 0], [30, 31, 5]], np.int32)
mesh = partitioning.create_mesh(model_parallel=2)
rules = partitioning.prompt_logical_axis_rules()


def loss_and_grad(model, frozen, trainable, batch):
  return jax.value_and_grad(lambda t: model.loss_fn(frozen, t, batch)[0])(trainable)


def rank(model, frozen, trainable, batch, candidates):
  return model.rank_classify(frozen, trainable, batch, candidates)


want_loss, want_grads = jax.jit(functools.partial(loss_and_grad, naive))(frozen, prompt, batch)
want_scores = jax.jit(functools.partial(rank, naive))(frozen, prompt, inputs, candidates)
assert float(np.max(np.abs(want_grads['prompt']))) > 0
for layout in (dict(), dict(scan_layers=True, remat_policy='full')):
  model = DecoderOnlyModel(config.replace(**layout), method, eos_id=5)
  steps = ShardedSteps(model, None, mesh, rules)
  placed = steps.place_frozen(scan.stack_layers(frozen) if layout else frozen)
  trainable = steps.place_trainable(prompt)
  loss, grads = steps.compiled(functools.partial(loss_and_grad, model))(placed, trainable, steps.shard_batch(batch))
  assert_close_to_scale(loss, want_loss, err_msg=str(layout))
  assert_close_to_scale(grads['prompt'], want_grads['prompt'], rtol=1e-4, err_msg=str(layout))
  scores = steps.compiled(functools.partial(rank, model), 1)(placed, trainable, steps.shard_batch(inputs), candidates)
  np.testing.assert_allclose(scores, want_scores, atol=1e-4, err_msg=str(layout))
  key = placed['decoder']['layers' if layout else 'layers_0']['self_attention']['key']['kernel']
  assert key.sharding.spec[-1] == 'model', key.sharding  # the K/V heads really are split
print('OK')
