"""Running a script under N simulated CPU devices (the device count is read once, when jax is imported)."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_with_devices(script: pathlib.Path, num_devices: int, *args: str, timeout: float = 600) -> str:
  """Runs `script` in a fresh python with `num_devices` CPU devices; returns stdout, fails with its logs."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={num_devices}'.strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  env['PYTHONPATH'] = f'{REPO}{os.pathsep}{env.get("PYTHONPATH", "")}'
  proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f'{script.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}')
  return proc.stdout
