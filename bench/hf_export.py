"""Host memory and time of `save_hf_t5` (what `jaxprompt export --format hf_model` runs) from a T5X checkpoint.

A random float32 T5X classic checkpoint of a named config (default t5_1_1_base, 248 M parameters, 1 GB) is
written once; then each `--shard_mib` value exports it in a fresh process, which reports its peak resident
memory above what it held before the export started (Linux: the peak is reset through /proc/self/clear_refs). The
writer reads one tensor at a time, so that should follow the shard size (plus about two of the largest tensor),
not the model size.

  python bench/hf_export.py [--config t5_1_1_base] [--shard_mib 2048,256,64] [--dir /tmp/hf_export_bench]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_CHILD = """
import json, sys, time
from jaxprompt.checkpoints import t5x
from jaxprompt.checkpoints.hf_writer import save_hf_t5
from jaxprompt.models.config import get_config

def status(key):
  return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':')) / 1024

ckpt, config, out, shard = sys.argv[1], get_config(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sources = t5x.t5x_sources(ckpt)
with open('/proc/self/clear_refs', 'w') as f:
  f.write('5')  # resets the peak (VmHWM) to the current resident size: the imports' own peak is not counted
before, start = status('VmRSS'), time.time()
summary = save_hf_t5(sources, config, out, max_shard_bytes=shard, overwrite=True)
files = len([f for f in summary['files'] if f.endswith('.safetensors')])
print(json.dumps({'seconds': time.time() - start, 'before_mib': before, 'peak_mib': status('VmHWM'),
                  'bytes': summary['bytes'], 'files': files}))
"""


def _checkpoint(config_name: str, folder: str) -> str:
  """A random float32 T5X classic checkpoint of `config_name` (written once; reused when present)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxprompt.checkpoints import common, hf_names  # pylint: disable=g-import-not-at-top
  from jaxprompt.checkpoints.t5x_writer import save_t5x_checkpoint  # pylint: disable=g-import-not-at-top
  from jaxprompt.models.config import get_config  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, 'checkpoint_0')
  if not os.path.exists(path):
    config = get_config(config_name)
    rng = np.random.default_rng(0)
    plan = hf_names.t5x_plan(config, None if config.logits_via_embedding else hf_names.HEAD_KEY)
    flat = {name: rng.standard_normal(entry.shape, np.float32) for name, entry in plan.items()}
    save_t5x_checkpoint(common.unflatten_params(flat), folder)
  return path


def _child(*args: str) -> dict:
  proc = subprocess.run([sys.executable, '-c', _CHILD, *args], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='t5_1_1_base')
  parser.add_argument('--shard_mib', default='2048,256,64')
  parser.add_argument('--dir', default='/tmp/hf_export_bench')
  args = parser.parse_args()
  start = time.time()
  ckpt = _checkpoint(args.config, os.path.join(args.dir, 't5x'))
  print(f'{args.config}: T5X checkpoint {ckpt} ({time.time() - start:.0f} s to write)')
  for mib in (int(m) for m in args.shard_mib.split(',')):
    got = _child(ckpt, args.config, os.path.join(args.dir, 'hf'), str(mib * 1024 * 1024))
    print(f'max_shard_bytes {mib:5d} MiB: {got["files"]:3d} file(s), {got["bytes"] / 2**20:.0f} MiB written in '
          f'{got["seconds"]:.1f} s; resident {got["before_mib"]:.0f} MiB before, peak {got["peak_mib"]:.0f} MiB '
          f'(+{got["peak_mib"] - got["before_mib"]:.0f} MiB)')


if __name__ == '__main__':
  main()
