"""Sharded execution on 8 simulated CPU devices (run in a subprocess: jax reads the device count once)."""
import pytest

from tests.helpers import REPO, run_with_devices


@pytest.mark.slow
def test_sharded_forward_equals_single_device_and_params_follow_rules(fixtures_dir):
  out = run_with_devices(REPO / 'tests' / 'scripts' / 'sharded_forward.py', 8,
                         str(fixtures_dir / 't5x_tiny' / 'reference_step0.npz'))
  assert out.strip().endswith('OK')


def test_standard_rules_match_t5x():
  from jaxprompt.parallel import partitioning
  rules = partitioning.standard_logical_axis_rules()
  assert rules[:8] == [('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'), ('heads', 'model'),
                       ('kv', None), ('joined_kv', 'model'), ('relpos_buckets', None)]
  two_d = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert ('embed', 'data') in two_d and ('embed', None) not in two_d
  assert partitioning.prompt_logical_axis_rules()[:2] == [('prompt', None), ('prompt_embed', None)]


@pytest.mark.slow
def test_sharded_train_step_equals_single_device(fixtures_dir):
  out = run_with_devices(REPO / 'tests' / 'scripts' / 'sharded_train_step.py', 8,
                         str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  assert out.strip().endswith('OK')
