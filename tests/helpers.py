"""Test helpers: running a script under N simulated CPU devices (the device count is read once, when jax is
imported), comparing trees bitwise or to the tolerance their computation allows, a small prompt-tuning
TrainState, and entry-point arguments with some fields of their groups changed."""
import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.runtime.optim import make_optimizer
from jaxprompt.runtime.state import TrainState, init_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]


def regroup(kwargs: dict, **changes) -> dict:
  """Entry-point `kwargs` with changes: a dict changes those fields of the group of that name
  (`regroup(train_kwargs, schedule=dict(train_steps=2))`), any other value replaces the argument."""
  out = dict(kwargs)
  for name, change in changes.items():
    out[name] = dataclasses.replace(out[name], **change) if isinstance(change, dict) else change
  return out


def subprocess_env(num_devices: int | None = None, **extra: str) -> dict[str, str]:
  """This process's environment for a child python: the run's compilation cache and XLA flags (conftest.py), CPU
  only (with `num_devices` simulated devices when given), the repository importable, TensorFlow quiet; plus
  `extra`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  if num_devices is not None:
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={num_devices}'.strip()
  return {**env, **extra}


def run_with_devices(script: pathlib.Path, num_devices: int, *args: str, timeout: float = 600) -> str:
  """Runs `script` in a fresh python with `num_devices` CPU devices; returns stdout, fails with its logs."""
  env = subprocess_env(num_devices)
  proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f'{script.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}')
  return proc.stdout


def assert_trees_equal(a, b) -> None:
  """Same tree, and every leaf the same dtype, shape and bytes (bitwise: -0.0 != 0.0, NaN payloads count)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def assert_close_to_scale(got, want, rtol: float = 1e-5, err_msg: str = '') -> None:
  """`got` equals `want` up to `rtol` of the largest |want| (plus `rtol` of each value).

  For sums and gradients computed in another float32 order (another shape, sharding or processor): their rounding
  error follows the magnitude of the whole sum, so a fixed atol is too tight for large values and meaningless
  for small ones.
  """
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = float(np.max(np.abs(want), initial=0.0))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def assert_trained_close(got, want, start, steps: int, rtol_per_step: float = 2e-3) -> None:
  """Two trees trained `steps` steps from `start` by the same computation in another float32 order agree to within
  `rtol_per_step * steps` of how far training moved each leaf (and training did move every leaf).

  Rounding differences in the gradients (sharded reductions, microbatch sums, XLA:CPU kernels that round
  differently on another processor) pass through Adam/Adafactor's normalisation, which can amplify them in
  components whose gradient is near zero: the gap is a fraction of the update, and it grows with each step.
  """
  leaves = zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), jax.tree.leaves(start))
  assert jax.tree.structure(got) == jax.tree.structure(want) == jax.tree.structure(start)
  for (path, w), g, s in leaves:
    w, g, s = (np.asarray(x, np.float64) for x in (w, g, s))
    moved = float(np.max(np.abs(w - s), initial=0.0))
    assert moved > 0, f'{jax.tree_util.keystr(path)}: training did not move this leaf'
    np.testing.assert_allclose(g, w, rtol=0, atol=rtol_per_step * steps * moved, err_msg=jax.tree_util.keystr(path))


def prompt_copy(state: TrainState) -> dict[str, np.ndarray]:
  """What prompt tuning's `numpy_copy` gives: the float32 [P, d] prompt as prompt.npy."""
  return {'prompt.npy': np.asarray(state.trainable['prompt'], np.float32)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))  # one compile instead of dozens of eager ops
def prompt_state(length=5, embed=32, seed=0, step=7) -> TrainState:
  """A TrainState after one Adafactor update, so every optimizer leaf holds non-trivial values."""
  optimizer = make_optimizer()
  key = jax.random.key(seed)
  prompt = {'prompt': jax.random.normal(key, (length, embed), jnp.float32)}
  state = init_train_state(prompt, optimizer.tx, jax.random.key(seed + 1))
  grads = {'prompt': jax.random.normal(jax.random.fold_in(key, 1), (length, embed), jnp.float32)}
  _, opt_state = optimizer.tx.update(grads, state.opt_state, prompt)
  return state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)
