"""On 8 devices (data, model) = 4x2: a prompt bank (two input prompts of different lengths and modes, a prefix
on every attention kind) serving a mixed-task batch gives the single-device logits, rank scores and beam
decodes. Prints 'OK'."""
import functools
import sys

import jax
import numpy as np

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.methods import prompt_bank
from jaxprompt.methods.prefix_tuning import prefix_tuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.parallel import partitioning
from jaxprompt.runtime.compiled import ShardedSteps
from tests.method_helpers import sharding_batch

assert jax.device_count() == 8
cfg = get_config('t5x_tiny')
frozen = load_t5x_checkpoint(sys.argv[1])
rs = np.random.RandomState(0)
prefix = prefix_tuning(cfg, length=3, projection=False, initializer='normal')
tasks = {
    'a': (PromptTuning(length=4, embed_dim=cfg.emb_dim), {'prompt': rs.uniform(-.5, .5, (4, cfg.emb_dim))}),
    'b': (PromptTuning(length=6, embed_dim=cfg.emb_dim, combine='suffix_after_eos'),
          {'prompt': rs.uniform(-.5, .5, (6, cfg.emb_dim))}), 'c': (prefix, prefix.init(jax.random.PRNGKey(1), frozen))
}
bank, tree = prompt_bank.build_bank(tasks, cfg)
model = build_model(cfg, bank)
batch = dict(sharding_batch(), task_ids=np.asarray([0, 2, 1, 1, 2, 0, 0, 2], np.int32))
candidates = np.stack([np.asarray([[5, 1, 0], [6, 7, 1]], np.int32)] * 8)

steps = ShardedSteps(model, None, partitioning.create_mesh(model_parallel=2), partitioning.prompt_logical_axis_rules())
sharded_frozen = load_t5x_checkpoint(sys.argv[1], shardings=steps.frozen_shardings)
placed = steps.place_trainable(tree)
fns = {
    'logits': lambda f, p, b: model.logits(f, p, b), 'rank': lambda f, p, b, c: model.rank_classify(f, p, b, c),
    'beam': lambda f, p, b: model.predict_batch(f, p, b, method='beam', num_decodes=2)
}
single = {
    'logits': jax.jit(functools.partial(fns['logits']))(frozen, tree, batch),
    'rank': jax.jit(fns['rank'])(frozen, tree, batch, candidates), 'beam': jax.jit(fns['beam'])(frozen, tree, batch)
}
sharded_batch = steps.shard_batch(batch)
got = {
    'logits': steps.compiled(fns['logits'])(sharded_frozen, placed, sharded_batch),
    'rank': steps.compiled(fns['rank'], 1)(sharded_frozen, placed, sharded_batch, candidates),
    'beam': steps.compiled(fns['beam'])(sharded_frozen, placed, sharded_batch)
}
np.testing.assert_allclose(np.asarray(got['logits']), np.asarray(single['logits']), atol=1e-4)
np.testing.assert_allclose(np.asarray(got['rank']), np.asarray(single['rank']), atol=1e-4)
np.testing.assert_array_equal(np.asarray(got['beam'][0]), np.asarray(single['beam'][0]))
print('OK')
