"""Memory plan by compilation: T5 1.1 XXL's train step must fit 8 devices of 16 GiB (a v3-8), nothing allocated."""
import json
import math
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from bench import plan_step as memory_plan
from jaxprompt.errors import ConfigError
from jaxprompt.formats.keys import PROMPT_KEY
from tests.helpers import subprocess_env

GiB = 1024**3
V3_CORE_HBM = 16 * GiB


def _frozen_param_count(request: memory_plan.PlanRequest) -> int:
  boxed = memory_plan.plan_model(request).init_abstract(1, 8, 4)['params']
  frozen = {k: v for k, v in nn.meta.unbox(boxed).items() if k != PROMPT_KEY}
  return sum(math.prod(x.shape) for x in jax.tree.leaves(frozen))


@pytest.mark.slow
def test_xxl_train_step_fits_v3_8():
  """(data, model) = (4, 2) with 2-D parameter sharding (the layout gin_configs should use on a v3-8), compiled
  for 8 simulated CPU devices. bench/memory_plan.py has the other layouts and slices."""
  env = subprocess_env(8)
  args = ['--model', 't5_1_1_xxl', '--model_parallel', '2', '--parameter_partitioning_dims', '2']
  proc = subprocess.run([sys.executable, '-m', 'bench.plan_step', *args], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  plan = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (plan['num_devices'], plan['data_parallel'], plan['batch_size'], plan['prompt_length']) == (8, 4, 32, 100)
  assert (plan['input_length'], plan['target_length'], plan['dtype']) == (512, 16, 'bfloat16')
  # The paper's run: scanned layers, full per-layer remat, dropout 0.1 (runs/prompt_tuning.gin).
  assert (plan['scan_layers'], plan['remat_policy'], plan['dropout_rate']) == (True, 'full', 0.1)

  # The frozen weights are bf16 and split 8 ways (a few replicated norm scales aside).
  params = _frozen_param_count(memory_plan.PlanRequest())
  assert 11.0e9 < params < 11.5e9
  assert params * 2 / 8 <= plan['frozen_bytes'] < params * 2 / 8 * 1.01
  # Arguments = frozen weights + prompt-sized state + batch.
  assert 0 < plan['argument_bytes'] - plan['frozen_bytes'] < 64 * 2**20
  assert plan['temp_bytes'] > 0
  total = plan['argument_bytes'] + plan['temp_bytes']
  assert total == plan['total_bytes']
  assert total <= V3_CORE_HBM, f'XXL needs {total / GiB:.1f} GiB per device, more than a v3 core (16 GiB)'


TINY = dict(model='test_tiny', model_parallel=1, batch_size=4, input_length=16, target_length=4, prompt_length=3)


@pytest.mark.slow
def test_tiny_plan_reads_compiled_memory():
  request = memory_plan.PlanRequest(**TINY)
  plan = memory_plan.plan_train_step(request, jax.devices()[:1])
  assert plan.num_devices == 1 and plan.data_parallel == 1
  assert plan.frozen_bytes == _frozen_param_count(request) * 2  # bf16, unsharded on one device
  assert plan.argument_bytes > plan.frozen_bytes
  assert plan.temp_bytes > 0 and plan.total_bytes == plan.argument_bytes + plan.temp_bytes
  assert plan.alias_bytes > 0  # the train state is donated: outputs reuse its buffers
  bigger = memory_plan.plan_train_step(memory_plan.PlanRequest(**dict(TINY, batch_size=64)), jax.devices()[:1])
  assert bigger.temp_bytes > plan.temp_bytes  # activations scale with the batch
  assert bigger.frozen_bytes == plan.frozen_bytes
  row = plan.as_dict()
  assert row['dtype'] == 'bfloat16' and row['total_bytes'] == plan.total_bytes


def test_cli_builds_the_request_and_prints_json(capsys, monkeypatch):
  seen = []

  def fake_plan(request):  # argument parsing only; compiling is covered above
    seen.append(request)
    return memory_plan.MemoryPlan(request, 1, 1, 10, 20, 3, 3, 8, 0.1)

  monkeypatch.setattr(memory_plan, 'plan_train_step', fake_plan)
  memory_plan.main([
      '--model', 't5_1_1_xl', '--model_parallel', '4', '--batch_size', '2', '--dtype', 'float32', '--scan_layers',
      'false', '--remat_policy', 'dots'
  ])
  request = seen[0]
  assert (request.model, request.model_parallel, request.batch_size) == ('t5_1_1_xl', 4, 2)
  assert request.dtype == jax.numpy.float32 and request.scan_layers is False and request.remat_policy == 'dots'
  assert request.input_length == 512 and request.prompt_length == 100  # defaults: the paper's setting
  plan = json.loads(capsys.readouterr().out)
  assert plan['dtype'] == 'float32' and plan['total_bytes'] == 30 and plan['peak_bytes'] == 30


@pytest.mark.parametrize('changes, message', [
    (dict(model_parallel=3), 'model_parallel=3 must divide the number of devices (1)'),
    (dict(batch_size=6, num_microbatches=4), 'batch_size=6 with num_microbatches=4'),
    (dict(parameter_partitioning_dims=3), 'parameter_partitioning_dims=3'),
    (dict(model='t5_1_1_xxxl'), "unknown model config 't5_1_1_xxxl'"),
])
def test_bad_requests_name_the_culprit(changes, message):
  with pytest.raises(ConfigError) as e:
    memory_plan.plan_train_step(memory_plan.PlanRequest(**dict(TINY, **changes)), jax.devices()[:1])
  assert message in str(e.value)
