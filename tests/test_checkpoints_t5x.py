"""T5X checkpoint readers against checkpoints written by the real t5x code (../shared/fixtures)."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from jaxprompt.checkpoints import (
    detect_format,
    flatten_params,
    kvstore_spec,
    latest_checkpoint,
    load_t5x_checkpoint,
    t5x_checkpoint_step,
    t5x_classic,
    t5x_orbax,
    unflatten_params,
)
from jaxprompt.errors import CheckpointError, ConfigError
from tests.helpers import subprocess_env

QUERY = "encoder/layers_0/attention/query/kernel"


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
  return fixtures_dir / "t5x_tiny"


@pytest.fixture(scope="module")
def reference(tiny):
  with np.load(tiny / "reference_step0.npz") as z:
    return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}


def _writable_copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)  # fixture files are read-only; the copy must be damageable
  for root, dirs, files in os.walk(dst):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755)
  return dst


def _flat_load(path, **kw):
  return flatten_params(load_t5x_checkpoint(path, **kw))


# ------------------------------------------------------------------------------------ formats & values


def test_detect_format_and_step(fixtures_dir, tiny):
  assert detect_format(tiny / "classic_checkpoint_0") == "classic"
  assert detect_format(tiny / "orbax_checkpoint_0") == "orbax"
  assert detect_format(fixtures_dir / "t5x_t5_1_1_tiny_checkpoint_3") == "classic"
  assert detect_format(fixtures_dir / "t5x_test_t5_tiny.checkpoint_0") == "msgpack_file"
  assert detect_format(tiny / "classic_checkpoint_0" / "checkpoint") == "msgpack_file"
  assert t5x_checkpoint_step(fixtures_dir / "t5x_t5_1_1_tiny_checkpoint_3") == 3
  assert t5x_checkpoint_step("gs://bucket/run/checkpoint_1000/") == 1000
  assert t5x_checkpoint_step("/m/checkpoint_25/checkpoint") == 25
  assert t5x_checkpoint_step("/m/t5x_test_t5_tiny.checkpoint_0") == 0
  assert t5x_checkpoint_step("/m/model_dir") is None


def test_t5x_tiny_classic_and_orbax_equal_reference(tiny, reference):
  classic = load_t5x_checkpoint(tiny / "classic_checkpoint_0")
  orbax = load_t5x_checkpoint(tiny / "orbax_checkpoint_0")
  assert classic["token_embedder"]["embedding"].shape == (128, 32)
  assert classic["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 32)
  assert classic["encoder"]["relpos_bias"]["rel_embedding"].shape == (4, 32)
  assert classic["decoder"]["logits_dense"]["kernel"].shape == (32, 128)
  assert sorted(classic) == ["decoder", "encoder", "token_embedder"]  # no optimizer state leaks in
  flat_c, flat_o = flatten_params(classic), flatten_params(orbax)
  assert set(flat_c) == set(flat_o) == set(reference)
  assert len(reference) == 52
  for path, want in reference.items():
    assert flat_c[path].dtype == want.dtype == np.float32, path
    np.testing.assert_array_equal(flat_c[path], want, err_msg=path)
    np.testing.assert_array_equal(flat_o[path], want, err_msg=path)


def test_t5_1_1_tiny_classic_mixes_inline_and_zarr(fixtures_dir):
  ckpt = fixtures_dir / "t5x_t5_1_1_tiny_checkpoint_3"
  flat = _flat_load(ckpt)
  shapes = {
      "token_embedder/embedding": (32128, 4),
      "decoder/logits_dense/kernel": (4, 32128),
      QUERY: (4, 4),
      "encoder/layers_0/mlp/wi_0/kernel": (4, 8),
      "encoder/layers_0/mlp/wo/kernel": (8, 4),
      "encoder/relpos_bias/rel_embedding": (2, 4),
      "decoder/decoder_norm/scale": (4,),
  }
  for path, shape in shapes.items():
    assert flat[path].shape == shape, path
  # Independent decoders: flax for inline leaves, tensorstore on the zarr folder for the others.
  target = flax.serialization.msgpack_restore((ckpt / "checkpoint").read_bytes())["optimizer"]["target"]
  inline = {p: v for p, v in flatten_params(target).items() if isinstance(v, np.ndarray)}
  zarr_folders = [d for d in ckpt.iterdir() if d.is_dir()]
  assert "encoder/relpos_bias/rel_embedding" in inline and len(inline) + len(zarr_folders) == len(flat) == 52
  for path, stored in inline.items():
    np.testing.assert_array_equal(flat[path], stored, err_msg=path)
  emb = ts.open({
      "driver": "zarr", "kvstore": {"driver": "file", "path": str(ckpt / "target.token_embedder.embedding")}
  }).result()
  np.testing.assert_array_equal(flat["token_embedder/embedding"], emb.read().result())
  assert np.isfinite(flat["token_embedder/embedding"]).all() and flat["token_embedder/embedding"].std() > 0


def test_single_file_msgpack_matches_flax_decoder(fixtures_dir):
  path = fixtures_dir / "t5x_test_t5_tiny.checkpoint_0"
  flat = _flat_load(path)
  want = flatten_params(flax.serialization.msgpack_restore(path.read_bytes())["optimizer"]["target"])
  assert set(flat) == set(want) and len(flat) == 52
  for key in want:
    np.testing.assert_array_equal(flat[key], want[key], err_msg=key)
  assert flat["token_embedder/embedding"].shape == (32128, 8)
  assert flat[QUERY].shape == (8, 12)  # 4 heads x head_dim 3
  assert flat["encoder/layers_0/mlp/wi_0/kernel"].shape == (8, 16)


def test_dtype_cast_to_bfloat16(tiny, reference):
  for name in ("classic_checkpoint_0", "orbax_checkpoint_0"):
    flat = _flat_load(tiny / name, dtype=jnp.bfloat16)
    for path, want in reference.items():
      assert flat[path].dtype == jnp.bfloat16, path
      np.testing.assert_array_equal(flat[path], want.astype(jnp.bfloat16), err_msg=path)


def test_orbax_without_metadata_file_lists_the_database(tiny, reference, tmp_path):
  ckpt = _writable_copy(tiny / "orbax_checkpoint_0", tmp_path / "checkpoint_0")
  (ckpt / "state" / "_METADATA").unlink()
  flat = _flat_load(ckpt)
  assert set(flat) == set(reference)
  np.testing.assert_array_equal(flat[QUERY], reference[QUERY])


def test_flatten_unflatten_roundtrip():
  tree = {"a": {"b": np.zeros(2), "c": {"d": 1}}, "e": 3, "empty": {}}
  flat = flatten_params(tree)
  assert sorted(flat) == ["a/b", "a/c/d", "e"]
  back = unflatten_params(flat)
  assert back["a"]["c"]["d"] == 1 and back["e"] == 3 and "empty" not in back


# ---------------------------------------------------------------------------------- options


def test_expected_shapes_pass_and_report_first_mismatch(tiny, reference):
  shapes = unflatten_params({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in reference.items()})
  assert set(_flat_load(tiny / "orbax_checkpoint_0", expected_shapes=shapes)) == set(reference)
  bad = unflatten_params({k: v.shape for k, v in reference.items()})
  bad["encoder"]["layers_1"]["mlp"]["wo"]["kernel"] = (64, 33)
  bad["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] = (65, 32)  # sorts first
  with pytest.raises(CheckpointError) as e:
    load_t5x_checkpoint(tiny / "classic_checkpoint_0", expected_shapes=bad)
  msg = str(e.value)
  assert "'decoder/layers_0/mlp/wo/kernel'" in msg and "[64, 32]" in msg and "[65, 32]" in msg
  assert "layers_1" not in msg
  bad["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] = "64x32"
  with pytest.raises(ConfigError, match="expected_shapes\\['decoder/layers_0/mlp/wo/kernel'\\] is '64x32'"):
    load_t5x_checkpoint(tiny / "classic_checkpoint_0", expected_shapes=bad)


def test_expected_shapes_missing_and_unexpected(tiny, reference):
  shapes = unflatten_params({k: v.shape for k, v in reference.items()})
  del shapes["decoder"]["logits_dense"]
  shapes["prompt"] = {"prompt": (5, 32)}
  with pytest.raises(
      CheckpointError, match=r"missing from the checkpoint: 'prompt/prompt'.*"
      r"not expected: 'decoder/logits_dense/kernel'"):
    load_t5x_checkpoint(tiny / "classic_checkpoint_0", expected_shapes=shapes)


def test_shardings_on_one_device(tiny, reference):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  flat = _flat_load(tiny / "orbax_checkpoint_0", shardings=lambda p: device if "query" in p else None)
  assert isinstance(flat[QUERY], jax.Array) and flat[QUERY].sharding == device
  assert isinstance(flat["token_embedder/embedding"], np.ndarray)
  np.testing.assert_array_equal(np.asarray(flat[QUERY]), reference[QUERY])
  with pytest.raises(CheckpointError, match="'decoder/decoder_norm/scale' is in the checkpoint but has no"):
    load_t5x_checkpoint(tiny / "classic_checkpoint_0", shardings={"encoder": device})
  spec = jax.sharding.PartitionSpec("model")
  with pytest.raises(ConfigError, match=f"shardings for parameter '{QUERY}' is P.*not a jax.sharding.Sharding"):
    load_t5x_checkpoint(tiny / "classic_checkpoint_0", shardings=lambda p: spec if p == QUERY else None)


_SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxprompt.checkpoints import common, flatten_params, load_t5x_checkpoint, unflatten_params

tiny, single = sys.argv[1], sys.argv[2]
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
def rule(path):
  if path == "token_embedder/embedding": return NamedSharding(mesh, P("model", None))
  if path.endswith("query/kernel"): return NamedSharding(mesh, P("data", "model"))
  return NamedSharding(mesh, P())
reads = []  # (parameter, shape of each tensorstore/inline read)
for cls in (common.TensorStoreSource, common.InlineSource):
  def spy(self, index, _f=cls.start_read):
    reads.append((self.name, [s.stop - s.start for s in index]))
    return _f(self, index)
  cls.start_read = spy
ref = dict(np.load(tiny + "/reference_step0.npz"))
out = {"devices": len(jax.devices())}
for name in ("classic_checkpoint_0", "orbax_checkpoint_0"):
  reads.clear()
  flat = flatten_params(load_t5x_checkpoint(tiny + "/" + name, shardings=rule, dtype=jnp.bfloat16))
  emb, q = flat["token_embedder/embedding"], flat["encoder/layers_0/attention/query/kernel"]
  out[name] = {
    "all_jax": all(isinstance(a, jax.Array) for a in flat.values()),
    "shardings_ok": all(a.sharding == rule(p) for p, a in flat.items()),
    "values_ok": all(np.array_equal(np.asarray(a), ref["param/" + p].astype(jnp.bfloat16))
                     for p, a in flat.items()),
    "dtype": str(emb.dtype),
    "emb_shards": sorted({tuple(s.data.shape) for s in emb.addressable_shards}),
    "q_shards": sorted({tuple(s.data.shape) for s in q.addressable_shards}),
    "emb_reads": [r for p, r in reads if p == "token_embedder/embedding"],
  }
tree_shardings = unflatten_params({p: rule(p) for p in flatten_params(load_t5x_checkpoint(single))})
flat = flatten_params(load_t5x_checkpoint(single, shardings=tree_shardings))
emb = flat["token_embedder/embedding"]
out["single_file_emb_shards"] = sorted({tuple(s.data.shape) for s in emb.addressable_shards})
bad = NamedSharding(mesh, P(("data", "model"), None))  # 8-way split of a dimension of 4
try:
  load_t5x_checkpoint(tiny + "/classic_checkpoint_0", shardings=lambda p: bad if "rel_embedding" in p else None)
  out["bad_sharding"] = "no error"
except Exception as e:
  out["bad_sharding"] = f"{type(e).__name__}: {e}"
print("RESULT" + json.dumps(out))
"""


def test_sharded_load_on_8_cpu_devices(fixtures_dir, tiny):
  env = subprocess_env(8)
  proc = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT,
       str(tiny), str(fixtures_dir / "t5x_test_t5_tiny.checkpoint_0")], env=env, capture_output=True, text=True,
      timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["devices"] == 8
  for name in ("classic_checkpoint_0", "orbax_checkpoint_0"):
    got = out[name]
    assert got["all_jax"] and got["shardings_ok"] and got["values_ok"], (name, got)
    assert got["dtype"] == "bfloat16"
    assert got["emb_shards"] == [[64, 32]]  # vocab split over 'model' (2), replicated over 'data'
    assert got["q_shards"] == [[8, 16]]
    assert sorted(got["emb_reads"]) == [[64, 32], [64, 32]]  # one read per distinct shard, never whole
  assert out["single_file_emb_shards"] == [[16064, 8]]
  assert out["bad_sharding"].startswith(
      "CheckpointError: parameter 'decoder/relpos_bias/rel_embedding' of shape [4, 32] cannot take sharding")


# ---------------------------------------------------------------------------------- paths


def test_latest_checkpoint_picks_largest_step(fixtures_dir, tiny, tmp_path):
  model = tmp_path / "model"
  model.mkdir()
  (model / "checkpoint_0").symlink_to(tiny / "classic_checkpoint_0")
  (model / "checkpoint_3").symlink_to(fixtures_dir / "t5x_t5_1_1_tiny_checkpoint_3")
  (model / "checkpoint_20").mkdir()  # not a checkpoint (no msgpack / orbax metadata): skipped
  (model / "checkpoint_30.orbax-checkpoint-tmp-1").mkdir()
  assert latest_checkpoint(model) == str(model / "checkpoint_3")
  assert _flat_load(model)["token_embedder/embedding"].shape == (32128, 4)
  (model / "checkpoint_10").symlink_to(tiny / "orbax_checkpoint_0")  # 10 > 3 numerically, not as text
  assert latest_checkpoint(model) == str(model / "checkpoint_10")
  assert latest_checkpoint(tiny / "classic_checkpoint_0") == str(tiny / "classic_checkpoint_0")


def test_gcs_paths_map_to_gcs_kvstores(tiny):
  assert kvstore_spec("gs://bucket/runs/model") == {"driver": "gcs", "bucket": "bucket", "path": "runs/model/"}
  assert kvstore_spec("/tmp/x") == {"driver": "file", "path": "/tmp/x/"}
  with pytest.raises(CheckpointError, match="s3://b/x: unsupported storage scheme"):
    kvstore_spec("s3://b/x")
  # A real classic msgpack, placed (on paper) in a bucket: its zarr folders resolve inside that bucket.
  data = (tiny / "classic_checkpoint_0" / "checkpoint").read_bytes()
  target = t5x_classic.target_tree(t5x_classic.parse_msgpack(data, "ckpt"), "ckpt")
  sources = t5x_classic.target_sources(target, "gs://bkt/run/checkpoint_0", "ckpt")
  spec = sources["token_embedder/embedding"].spec
  assert spec["kvstore"] == {
      "driver": "gcs", "bucket": "bkt", "path": "run/checkpoint_0/target.token_embedder.embedding/"
  }
  assert sources["token_embedder/embedding"].shape == (128, 32)  # from the index, no I/O
  ts.Spec(spec)  # a valid tensorstore spec
  orbax_kv = t5x_orbax.array_kvstore("gs://bkt/run/checkpoint_0/state", "target.a.b", use_ocdbt=True)
  assert orbax_kv == {
      "driver": "ocdbt", "path": "target.a.b/",
      "base": {"driver": "gcs", "bucket": "bkt", "path": "run/checkpoint_0/state/"}
  }
  ts.Spec({"driver": "zarr", "kvstore": orbax_kv})


# ---------------------------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}/nope: checkpoint path does not exist")):
    load_t5x_checkpoint(tmp_path / "nope")


def test_directory_that_is_not_a_checkpoint(tmp_path):
  (tmp_path / "logs").mkdir()
  (tmp_path / "checkpoint_5").mkdir()
  message = f"{tmp_path}: not a T5X checkpoint and contains no checkpoint_<step>"
  with pytest.raises(CheckpointError, match=re.escape(message)):
    load_t5x_checkpoint(tmp_path)
  with pytest.raises(CheckpointError, match="not a T5X checkpoint"):
    detect_format(tmp_path)


def test_corrupt_msgpack(fixtures_dir, tiny, tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  with pytest.raises(CheckpointError, match="notes.txt: not a T5X checkpoint .*not a msgpack map"):
    load_t5x_checkpoint(text)
  truncated = tmp_path / "truncated.checkpoint_0"
  truncated.write_bytes((fixtures_dir / "t5x_test_t5_tiny.checkpoint_0").read_bytes()[:100_000])
  with pytest.raises(CheckpointError, match="truncated.checkpoint_0: not a readable msgpack checkpoint"):
    load_t5x_checkpoint(truncated)
  ckpt = _writable_copy(tiny / "classic_checkpoint_0", tmp_path / "checkpoint_0")
  (ckpt / "checkpoint").write_bytes(b"\x83\xa1a\x01garbage")
  with pytest.raises(CheckpointError, match="checkpoint_0/checkpoint: not a readable msgpack checkpoint"):
    load_t5x_checkpoint(ckpt)


def test_damaged_zarr_chunk_names_the_parameter(tiny, tmp_path):
  ckpt = _writable_copy(tiny / "classic_checkpoint_0", tmp_path / "checkpoint_0")
  (ckpt / "target.encoder.layers_0.attention.query.kernel" / "0.0").write_bytes(os.urandom(300))
  with pytest.raises(CheckpointError, match=f"parameter '{QUERY}': cannot read its data"):
    load_t5x_checkpoint(ckpt)
  shutil.rmtree(ckpt / "target.encoder.layers_0.attention.query.kernel")
  with pytest.raises(CheckpointError, match=f"parameter '{QUERY}': cannot open its array"):
    load_t5x_checkpoint(ckpt)
