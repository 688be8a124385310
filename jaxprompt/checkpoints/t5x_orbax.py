"""Reader for T5X checkpoints written by t5x's Orbax checkpoint manager (t5x train.py's default).

Layout (orbax-checkpoint 0.12.x, PyTreeCheckpointHandler for the `state` item):
  checkpoint_<step>/_CHECKPOINT_METADATA          item handlers, timestamps
  checkpoint_<step>/state/_METADATA               JSON: tree_metadata keyed by key tuples, use_ocdbt, use_zarr3
  checkpoint_<step>/state/manifest.ocdbt, d/...   OCDBT database holding one zarr array per leaf, named
                                                  '.'.join(keys), e.g. 'target.encoder.layers_0...kernel'
  checkpoint_<step>/dataset/                      input pipeline state (ignored)
Only `target.*` arrays are opened, straight through tensorstore, so optimizer state is never read.
"""
from __future__ import annotations

import json
from typing import Any

import tensorstore as ts

from jaxprompt.checkpoints import common
from jaxprompt.errors import CheckpointError

STATE_ITEM = 'state'
_TARGET = 'target'


def item_dir(ckpt: str) -> str:
  """The pytree item directory: `<ckpt>/state`, or `ckpt` itself when it already is one."""
  path = common.as_path(ckpt)
  if (path / '_METADATA').exists() or (path / 'manifest.ocdbt').exists():
    return str(path)
  state = path / STATE_ITEM
  if state.is_dir():
    return str(state)
  items = sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
  raise CheckpointError(f"{ckpt}: orbax checkpoint without a '{STATE_ITEM}' item (items: {items})")


def _read_metadata(item: str) -> dict[str, Any] | None:
  path = common.as_path(item) / '_METADATA'
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except Exception as e:
    raise CheckpointError(f'{path}: damaged orbax metadata ({e})') from e


def _target_keys_from_metadata(meta: dict[str, Any], item: str) -> list[tuple[str, ...]]:
  keys = []
  for entry in meta.get('tree_metadata', {}).values():
    path = tuple(str(k['key']) for k in entry.get('key_metadata', ()))
    if path[:1] != (_TARGET,):
      continue
    value_type = entry.get('value_metadata', {}).get('value_type', '')
    if value_type not in ('jax.Array', 'np.ndarray'):
      raise CheckpointError(f"{item}: parameter '{'/'.join(path[1:])}' holds a {value_type!r}, not an array")
    keys.append(path)
  return keys


def array_kvstore(item: str, param: str, use_ocdbt: bool) -> dict[str, Any]:
  """kvstore spec of one array ('target.a.b') inside the item directory (local or gs://)."""
  base = common.kvstore_spec(item)
  if use_ocdbt:
    return {'driver': 'ocdbt', 'base': base, 'path': param + '/'}
  return common.child_kvstore_spec(base, param)


def _target_keys_from_listing(item: str, use_ocdbt: bool, context: ts.Context) -> tuple[list[tuple[str, ...]], bool]:
  # Checkpoints from orbax versions without `_METADATA`: every zarr array announces itself by its metadata key.
  base = common.kvstore_spec(item)
  store_spec = {'driver': 'ocdbt', 'base': base} if use_ocdbt else base
  try:
    names = ts.KvStore.open(store_spec, context=context).result().list().result()
  except Exception as e:
    raise CheckpointError(f'{item}: cannot list the orbax checkpoint ({common.short_error(e)})') from e
  keys, markers = set(), set()
  for raw in names:
    key = raw.decode()
    for marker in ('/.zarray', '/zarr.json'):
      if key.endswith(marker) and key.startswith(_TARGET + '.'):
        keys.add(tuple(key[:-len(marker)].split('.')))
        markers.add(marker)
  return sorted(keys), markers == {'/zarr.json'}


def read_sources(ckpt: str, context: ts.Context | None = None) -> dict[str, common.ArraySource]:
  """Sources for the `target` arrays of an orbax checkpoint directory."""
  context = context or ts.Context()
  item = item_dir(ckpt)
  meta = _read_metadata(item)
  if meta is not None:
    use_ocdbt, use_zarr3 = bool(meta.get('use_ocdbt', True)), bool(meta.get('use_zarr3', False))
    keys = _target_keys_from_metadata(meta, item)
  else:
    use_ocdbt = (common.as_path(item) / 'manifest.ocdbt').exists()
    keys, use_zarr3 = _target_keys_from_listing(item, use_ocdbt, context)
  if not keys:
    raise CheckpointError(f"{item}: orbax checkpoint has no '{_TARGET}' parameters")
  sources: dict[str, common.ArraySource] = {}
  for path in keys:
    param = '.'.join(path)
    spec = {'driver': 'zarr3' if use_zarr3 else 'zarr', 'kvstore': array_kvstore(item, param, use_ocdbt)}
    name = '/'.join(path[1:])
    sources[name] = common.TensorStoreSource(name, spec, f"{item.rstrip('/')}/{param}", context=context)
  return sources
