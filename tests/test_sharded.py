"""The 8-device checks on the T5 fixture model, a tiny causal LM and a tiny BERT: sharded (mesh data x model = 4 x 2)
equals one device, for the forward pass, the train step, every method's step, a prompt bank, the prompt once per
batch and an encoder's P-tuning v2 + head step.

The device count is fixed when jax is imported, so these run in a subprocess; one subprocess runs all eight
scripts (`tests/scripts/run_scripts.py`), which saves seven start-ups of jax and TensorFlow. Each test reads its
script's section of the output. The logical-axis rules those runs shard by are checked here too. The Hugging Face
readers' 8-device checks stay beside their models' fixtures (test_causal_lm.py, test_encoder_hf.py).
"""
import json

import pytest

from tests.helpers import REPO, run_with_devices

CHECKPOINT = ('t5x_tiny', 'classic_checkpoint_0')
# test name -> (script, its args; '{checkpoint}' / '{reference}' filled in, the last lines it must print)
RUNS = {
    'forward': ('sharded_forward.py', ['{reference}'], ['OK']),
    'train_step': ('sharded_train_step.py', ['{checkpoint}'], ['OK']),
    'p_tuning_and_per_layer_prompts':
        ('sharded_method_step.py', ['{checkpoint}'], ['p_tuning OK', 'per_layer_prompts OK', 'OK']),
    'multitask': ('sharded_method_step.py', ['{checkpoint}', 'multitask_prompts', 'multitask_prompt_tuning'],
                  ['multitask_prompts OK', 'multitask_prompt_tuning OK', 'OK']),
    'prefix_with_heads_over_model': ('sharded_prefix_step.py', ['{checkpoint}'], ['OK']),
    'prompt_bank': ('sharded_bank.py', ['{checkpoint}'], ['OK']),
    'causal_prompt_once': ('sharded_prompt_once.py', [], ['OK']),
    'encoder_head_step': ('sharded_head_step.py', [], ['OK']),
}


@pytest.fixture(scope='module')
def sections(fixtures_dir) -> dict[str, list[str]]:
  """{test name: the lines its script printed}, from one 8-device process running every script."""
  paths = {
      'checkpoint': str(fixtures_dir.joinpath(*CHECKPOINT)),
      'reference': str(fixtures_dir / 't5x_tiny' / 'reference_step0.npz')
  }
  runs = [[script] + [a.format(**paths) for a in args] for script, args, _ in RUNS.values()]
  out = run_with_devices(REPO / 'tests' / 'scripts' / 'run_scripts.py', 8, json.dumps(runs), timeout=900)
  found: dict[int, list[str]] = {}
  for line in out.splitlines():
    if line.startswith('=== '):
      index = int(line.split()[1])
      found[index] = []
    elif found:
      found[index].append(line)
  return {name: found.get(i, ['(no output)']) for i, name in enumerate(RUNS)}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(RUNS))
def test_sharded_equals_single_device(sections, name):
  lines = [line.strip() for line in sections[name] if line.strip()]
  want = RUNS[name][2]
  assert lines[-len(want):] == want, '\n'.join(sections[name])


def test_standard_rules_match_t5x():
  from jaxprompt.parallel import partitioning
  rules = partitioning.standard_logical_axis_rules()
  assert rules[:8] == [('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'), ('heads', 'model'),
                       ('kv', None), ('joined_kv', 'model'), ('relpos_buckets', None)]
  two_d = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert ('embed', 'data') in two_d and ('embed', None) not in two_d
  assert partitioning.prompt_logical_axis_rules()[:2] == [('prompt', None), ('prompt_embed', None)]
