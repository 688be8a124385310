"""Pieces shared by the checkpoint readers: paths, tensorstore specs, lazy arrays, tree helpers.

Every reader turns a checkpoint into a flat `{'a/b/c': ArraySource}` map (metadata only, nothing read yet);
`materialize` then checks it against the caller's expectations and reads each array, either whole onto the
host or shard by shard straight onto devices.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from etils import epath

from jaxprompt.errors import CheckpointError, ConfigError

Index = tuple[slice, ...]
Reader = Callable[[], np.ndarray]  # a started read: call it to wait for the data

_GS_RE = re.compile(r'gs://([^/]+)/?(.*)', re.DOTALL)

# ----------------------------------------------------------------------------------------------- paths


def as_path(path: str | os.PathLike) -> epath.Path:
  """An epath for local or `gs://` paths (tf.io.gfile only gets imported for `gs://`)."""
  return epath.Path(os.fspath(path))


def kvstore_spec(path: str | os.PathLike) -> dict[str, Any]:
  """Tensorstore kvstore spec for a directory: `gs://b/p` -> gcs driver, anything else -> local file."""
  path = os.fspath(path)
  m = _GS_RE.fullmatch(path)
  if m:
    return {'driver': 'gcs', 'bucket': m.group(1), 'path': _as_dir(m.group(2))}
  if '://' in path:
    raise CheckpointError(f'{path}: unsupported storage scheme (only local paths and gs:// are supported)')
  return {'driver': 'file', 'path': _as_dir(os.path.abspath(path))}


def child_kvstore_spec(base: Mapping[str, Any], relative: str) -> dict[str, Any]:
  """`base` (a kvstore spec for a directory) extended by the relative directory `relative`."""
  spec = dict(base)
  spec['path'] = _as_dir(spec.get('path', '') + relative.strip('/'))
  return spec


def _as_dir(path: str) -> str:
  # tensorstore treats the kvstore path as a key prefix: a trailing '/' keeps `foo/` from matching `foo.bar/`.
  return path if not path or path.endswith('/') else path + '/'


# --------------------------------------------------------------------------------------------- sources


class ArraySource:
  """A checkpoint array that has not been read yet.

  Attributes:
    name: parameter path ('encoder/layers_0/attention/query/kernel').
    where: human-readable location for error messages (file, zarr folder...).
  """

  name: str
  where: str

  @property
  def shape(self) -> tuple[int, ...]:
    raise NotImplementedError

  def start_read(self, index: Index) -> Reader:
    """Starts reading `array[index]`; the returned callable waits and returns it as numpy."""
    raise NotImplementedError


class InlineSource(ArraySource):
  """An array already in host memory (decoded from a msgpack file)."""

  def __init__(self, name: str, array: np.ndarray, where: str):
    self.name, self.array, self.where = name, array, where

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.array.shape)

  def start_read(self, index: Index) -> Reader:
    return lambda: self.array[index]


class TensorStoreSource(ArraySource):
  """An array stored with tensorstore (zarr folder, possibly inside an OCDBT database).

  `spec` is a full tensorstore spec with an absolute kvstore; the store is opened on first use so that
  listing a checkpoint costs no I/O when the shape is already declared (T5X classic msgpack specs).
  """

  def __init__(self, name: str, spec: dict[str, Any], where: str, *, declared_shape=None,
               context: ts.Context | None = None):
    self.name, self.spec, self.where = name, spec, where
    self.declared_shape = None if declared_shape is None else tuple(int(d) for d in declared_shape)
    self._context = context
    self._store = None

  def _open(self) -> ts.TensorStore:
    if self._store is None:
      try:
        self._store = ts.open(self.spec, read=True, open=True, context=self._context).result()
      except Exception as e:  # tensorstore reports missing/garbled metadata as ValueError and others
        raise CheckpointError(
            f"parameter '{self.name}': cannot open its array at {self.where}: {short_error(e)}") from e
      if self.declared_shape is not None and tuple(self._store.shape) != self.declared_shape:
        raise CheckpointError(
            f"parameter '{self.name}': array at {self.where} has shape {tuple(self._store.shape)} but the "
            f'checkpoint index declares {self.declared_shape}')
    return self._store

  @property
  def shape(self) -> tuple[int, ...]:
    if self.declared_shape is not None:
      return self.declared_shape
    return tuple(self._open().shape)

  def start_read(self, index: Index) -> Reader:
    future = self._open()[index].read()
    return future.result


class StackedSource(ArraySource):
  """Per-layer sources (`{stack}/layers_i/...`) seen as one array with a leading layer axis (scanned layers).

  A read of `[layers, ...]` reads only the requested layers' requested slices, so a sharded scanned model is
  still never assembled on one host.
  """

  def __init__(self, name: str, parts: list[ArraySource]):
    self.name, self.parts = name, parts
    self.where = f'{parts[0].where} (+{len(parts) - 1} more layers)'
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1:
      raise CheckpointError(f"parameter '{name}': layers have different shapes {sorted(shapes)}")

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.parts),) + tuple(self.parts[0].shape)

  def start_read(self, index: Index) -> Reader:
    layers, rest = index[0], tuple(index[1:])
    readers = [part.start_read(rest) for part in self.parts[layers]]
    return lambda: np.stack([read_guarded(part, r) for part, r in zip(self.parts[layers], readers)])


def stack_layer_sources(sources: Mapping[str, ArraySource]) -> dict[str, ArraySource]:
  """`{stack}/layers_i/rest` sources -> one `{stack}/layers/rest` StackedSource per `rest` (layer axis first)."""
  out: dict[str, ArraySource] = {}
  groups: dict[str, list[tuple[int, ArraySource]]] = {}
  for path, source in sources.items():
    stack, layer, *rest = path.split('/') + ['']
    if layer.startswith('layers_') and layer[len('layers_'):].isdigit():
      groups.setdefault('/'.join([stack, 'layers', *rest[:-1]]), []).append((int(layer[len('layers_'):]), source))
    else:
      out[path] = source
  for path, members in groups.items():
    members.sort(key=lambda m: m[0])
    indices = [i for i, _ in members]
    if indices != list(range(len(indices))):
      raise CheckpointError(f"parameter '{path}': layer indices {indices} are not contiguous from 0")
    out[path] = StackedSource(path, [m[1] for m in members])
  return out


def read_guarded(source: ArraySource, reader: Reader) -> np.ndarray:
  """Waits for a started read, turning storage errors into a CheckpointError naming the parameter."""
  try:
    return np.asarray(reader())
  except CheckpointError:
    raise
  except Exception as e:  # corrupt chunks surface as ValueError / RuntimeError from tensorstore
    raise CheckpointError(f"parameter '{source.name}': cannot read its data at {source.where}: {short_error(e)}") from e


def read_json_object(file: str) -> dict[str, Any]:
  """A JSON file holding one object (a Hugging Face config.json); one CheckpointError naming the file otherwise."""
  import json  # pylint: disable=g-import-not-at-top
  try:
    with open(file) as f:
      value = json.load(f)
  except ValueError as e:
    raise CheckpointError(f'{file}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise CheckpointError(f'{file}: expected a JSON object, got {type(value).__name__}')
  return value


def short_error(e: Exception) -> str:
  """A tensorstore error without the full spec dump it appends."""
  return str(e).split(' [tensorstore_spec=')[0]


# ------------------------------------------------------------------------------------------------ trees


def flatten_params(tree: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}. Leaves are anything that is not a Mapping; empty dicts vanish."""
  flat: dict[str, Any] = {}

  def visit(node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
      path = f'{prefix}{key}'
      if isinstance(value, Mapping):
        visit(value, path + sep)
      else:
        flat[path] = value

  visit(tree, '')
  return flat


def unflatten_params(flat: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}; keys are inserted in sorted order."""
  tree: dict[str, Any] = {}
  for path in sorted(flat):
    *parents, leaf = path.split(sep)
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
      if not isinstance(node, dict):
        raise ValueError(f"'{path}' lies under another leaf")
    node[leaf] = flat[path]
  return tree


# ------------------------------------------------------------------------------------------ validation


def _expected_shape(path: str, leaf: Any) -> tuple[int, ...]:
  shape = getattr(leaf, 'shape', leaf)
  try:
    if isinstance(shape, (str, bytes)):
      raise TypeError
    return tuple(int(d) for d in shape)
  except (TypeError, ValueError):
    raise ConfigError(f"expected_shapes['{path}'] is {leaf!r}, not a shape or ShapeDtypeStruct") from None


def check_shapes(sources: Mapping[str, ArraySource], expected: Mapping[str, Any], ckpt: str) -> None:
  """Raises CheckpointError on missing/unexpected parameters or on the first (sorted) shape mismatch."""
  want = {path: _expected_shape(path, leaf) for path, leaf in flatten_params(expected).items()}
  missing = sorted(set(want) - set(sources))
  unexpected = sorted(set(sources) - set(want))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'missing from the checkpoint: {_listing(missing)}')
    if unexpected:
      parts.append(f'in the checkpoint but not expected: {_listing(unexpected)}')
    raise CheckpointError(f'{ckpt}: parameters do not match the model; ' + '; '.join(parts))
  for path in sorted(want):
    got = sources[path].shape
    if got != want[path]:
      raise CheckpointError(f"{ckpt}: parameter '{path}' has shape {list(got)} in the checkpoint but the model expects "
                            f'{list(want[path])}')


def _listing(paths: list[str], limit: int = 10) -> str:
  shown = ', '.join(f"'{p}'" for p in paths[:limit])
  return shown + (f' and {len(paths) - limit} more' if len(paths) > limit else '')


# ------------------------------------------------------------------------------------------ reading

ShardingsArg = jax.sharding.Sharding | Mapping[str, Any] | Callable[[str], Any] | None


def sharding_lookup(shardings: ShardingsArg) -> Callable[[str], jax.sharding.Sharding | None]:
  """Normalizes the `shardings=` option to a function path -> Sharding (None = plain numpy)."""
  if shardings is None:
    return lambda path: None
  if isinstance(shardings, jax.sharding.Sharding):
    return lambda path: shardings
  if isinstance(shardings, Mapping):
    flat = flatten_params(shardings)

    def from_tree(path: str):
      if path not in flat:
        raise CheckpointError(f"parameter '{path}' is in the checkpoint but has no entry in `shardings`")
      return flat[path]

    return from_tree
  if callable(shardings):
    return shardings
  raise ConfigError(f'shardings must be a Sharding, a tree of Shardings or a callable, got {type(shardings)}')


def _cast(array: np.ndarray, dtype) -> np.ndarray:
  # Only floating parameters follow `dtype=` (like a bf16 restore in t5x); integer arrays keep theirs.
  if dtype is None or not jnp.issubdtype(array.dtype, jnp.floating):
    return array
  return array.astype(dtype, copy=False)


def _full_index(shape: tuple[int, ...]) -> Index:
  return tuple(slice(0, d) for d in shape)


def _index_key(index: Index, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  return tuple(s.indices(d)[:2] for s, d in zip(index, shape))


def _read_sharded(source: ArraySource, sharding: jax.sharding.Sharding, dtype) -> jax.Array:
  """Reads only the shards this process's devices hold, then assembles the global jax.Array."""
  shape = source.shape
  try:
    indices = sharding.addressable_devices_indices_map(shape)
  except Exception as e:  # e.g. a dimension not divisible by its mesh axis
    raise CheckpointError(f"parameter '{source.name}' of shape {list(shape)} cannot take sharding "
                          f'{sharding}: {e}') from e
  # Start every distinct shard read up front (replicas share one read) so tensorstore overlaps the I/O.
  pending: dict[tuple, Reader] = {}
  for index in indices.values():
    index = tuple(index) if index is not None else _full_index(shape)
    key = _index_key(index, shape)
    if key not in pending:
      pending[key] = source.start_read(tuple(slice(a, b) for a, b in key))
  done: dict[tuple, np.ndarray] = {}

  def shard(index: Index) -> np.ndarray:
    key = _index_key(tuple(index), shape)
    if key not in done:
      reader = pending.get(key) or source.start_read(tuple(slice(a, b) for a, b in key))
      done[key] = _cast(read_guarded(source, reader), dtype)
    return done[key]

  return jax.make_array_from_callback(shape, sharding, shard)


def materialize(sources: Mapping[str, ArraySource], *, dtype=None, shardings: ShardingsArg = None,
                expected_shapes: Mapping[str, Any] | None = None, ckpt: str = '') -> dict[str, Any]:
  """Reads every source; returns the nested tree (np.ndarray leaves, jax.Array where a sharding is given)."""
  if expected_shapes is not None:
    check_shapes(sources, expected_shapes, ckpt)
  dtype = None if dtype is None else jnp.dtype(dtype)
  lookup = sharding_lookup(shardings)
  placement = {path: lookup(path) for path in sorted(sources)}
  for path, sharding in placement.items():
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
      raise ConfigError(f"shardings for parameter '{path}' is {sharding!r}, not a jax.sharding.Sharding")
  out: dict[str, Any] = {}
  # Host reads are all started first so tensorstore can fetch them concurrently.
  started = {
      path: sources[path].start_read(_full_index(sources[path].shape))
      for path, sharding in placement.items()
      if sharding is None
  }
  for path, sharding in placement.items():
    source = sources[path]
    if sharding is None:
      out[path] = _cast(read_guarded(source, started[path]), dtype)
    else:
      out[path] = _read_sharded(source, sharding, dtype)
  return unflatten_params(out)
