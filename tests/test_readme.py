"""docs/model.md's Python example runs as written (on a fixture checkpoint instead of the gs:// one)."""
import pathlib
import re

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_model_example_runs(fixtures_dir):
  readme = (REPO / 'docs' / 'model.md').read_text()
  code = re.search(r'# The model\n\n```python\n(.*?)```', readme, re.S).group(1)
  assert "get_config('t5_1_1_base')" in code and 'gs://t5-data/pretrained_models/t5x/' in code
  code = code.replace("get_config('t5_1_1_base')", "get_config('t5x_test_tiny')")
  code = re.sub(r"'gs://[^']+'", repr(str(fixtures_dir / 't5x_test_t5_tiny.checkpoint_0')), code)
  tokens = np.array([[37, 1782, 19, 1], [8, 1, 0, 0]], np.int32)
  targets = np.array([[1465, 1], [2841, 1]], np.int32)
  batch = {'encoder_input_tokens': tokens, 'decoder_target_tokens': targets,
           'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           'decoder_loss_weights': (targets > 0).astype(np.float32)}
  namespace = {'rng': jax.random.PRNGKey(0), 'batch': batch, 'candidate_targets': targets}
  exec(compile(code, 'docs/model.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['prompt']['prompt'].shape == (100, namespace['config'].emb_dim)
  assert np.isfinite(float(namespace['loss'])) and namespace['decodes'].shape == targets.shape
