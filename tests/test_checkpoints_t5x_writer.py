"""The T5X checkpoint writer: t5x's classic layout (zarr folders, msgpack metadata) and the single-file form."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint, t5x_writer
from jaxprompt.checkpoints.t5x import detect_format
from jaxprompt.errors import CheckpointError
from tests.helpers import assert_trees_equal


def test_writer_classic_matches_t5x_layout(fixtures_dir, tmp_path):
  reference = fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'
  params = load_t5x_checkpoint(reference)
  path = t5x_writer.save_t5x_checkpoint(params, tmp_path, step=42)
  assert path == str(tmp_path / 'checkpoint_42') and detect_format(path) == 'classic'
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]
  assert_trees_equal(load_t5x_checkpoint(tmp_path), params)
  # Same zarr folders and metadata as t5x's Checkpointer wrote for the target tree.
  ours = sorted(p for p in os.listdir(path) if p != 'checkpoint')
  assert ours == sorted(p for p in os.listdir(reference) if p.startswith('target.'))
  for folder in ours:
    assert json.loads((pathlib.Path(path) / folder / '.zarray').read_text()) == json.loads(
        (reference / folder / '.zarray').read_text()), folder
  mine = msgpack.unpackb((pathlib.Path(path) / 'checkpoint').read_bytes(), raw=False, strict_map_key=False)
  theirs = msgpack.unpackb((reference / 'checkpoint').read_bytes(), raw=False, strict_map_key=False)
  assert mine['version'] == theirs['version'] == 3
  assert mine['optimizer']['target'] == theirs['optimizer']['target']  # the tensorstore specs, verbatim
  step = msgpack.unpackb(mine['optimizer']['state']['step'].data)
  assert step[1] == 'int32' and np.frombuffer(step[2], np.int32)[0] == 42


def test_writer_single_file_and_bfloat16(fixtures_dir, tmp_path):
  params = load_t5x_checkpoint(fixtures_dir / 't5x_test_t5_tiny.checkpoint_0')
  path = t5x_writer.save_t5x_checkpoint(params, tmp_path / 'ckpt.msgpack', step=3, layout='msgpack')
  assert detect_format(path) == 'msgpack_file'
  assert_trees_equal(load_t5x_checkpoint(path), params)
  half = t5x_writer.save_t5x_checkpoint(params, tmp_path / 'bf16', dtype=jnp.bfloat16)
  loaded = load_t5x_checkpoint(half)
  assert {x.dtype.name for x in jax.tree.leaves(loaded)} == {'bfloat16'}
  np.testing.assert_allclose(np.asarray(loaded['token_embedder']['embedding'], np.float32),
                             params['token_embedder']['embedding'], rtol=1e-2, atol=1e-2)


def test_writer_errors(tmp_path):
  params = {'token_embedder': {'embedding': np.ones((4, 2), np.float32)}}
  t5x_writer.save_t5x_checkpoint(params, tmp_path, step=1)
  with pytest.raises(CheckpointError, match='checkpoint_1 already exists'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, step=1)
  t5x_writer.save_t5x_checkpoint({'token_embedder': {'embedding': np.zeros((4, 2), np.float32)}}, tmp_path, step=1,
                                 overwrite=True)
  assert np.all(load_t5x_checkpoint(tmp_path / 'checkpoint_1')['token_embedder']['embedding'] == 0)
  with pytest.raises(CheckpointError, match="layout 'zip'"):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, layout='zip')
  with pytest.raises(CheckpointError, match='non-negative integer, got -2'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, step=-2)
  with pytest.raises(CheckpointError, match='empty parameter tree'):
    t5x_writer.save_t5x_checkpoint({}, tmp_path / 'empty')
  with pytest.raises(CheckpointError, match="parameter 'a/b' is not a numeric array"):
    t5x_writer.save_t5x_checkpoint({'a': {'b': object()}}, tmp_path / 'bad')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(CheckpointError, match='cannot create the checkpoint directory'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path / 'file', step=0)


def test_chunk_shape_tiles_the_array():
  assert t5x_writer.chunk_shape((768, 128), 4) == [768, 128]
  chunk = t5x_writer.chunk_shape((6, 10), 4, max_bytes=40)
  assert np.prod(chunk) * 4 <= 40 and all(d % c == 0 for d, c in zip((6, 10), chunk))
