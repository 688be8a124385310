"""The Hugging Face causal LM reader, and CausalTransformer against transformers running the same tiny random
models: Llama (GQA, llama3 rope, biases, untied head), Mistral (one kv head), Qwen2 (q/k/v biases, tied, sharded
files) and GPT-2 (learned positions, LayerNorm, fused q/k/v, tied). Logits agree within 1e-4 on the real rows of
right- and left-padded batches, with a prompt inserted in front (PEFT's prompt tuning: transformers given
inputs_embeds) and with a K/V prefix (PEFT's prefix tuning: transformers given past_key_values). Damaged folders
fail in one line naming the file and the tensor."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxprompt.checkpoints.hf_causal import hf_causal_config, load_hf_causal
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.scan import stack_layers
from tests.causal_helpers import (
    ARCHS,
    PrefixHook,
    PromptHook,
    build_hf,
    forward,
    hf_logits,
    hf_positions,
    padded_batch,
)

torch = pytest.importorskip('torch')
ATOL = 1e-4


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """{arch: (transformers model, params, config, folder)}, each built, saved and read back once."""
  out = {}
  for arch in ARCHS:
    folder = tmp_path_factory.mktemp(arch)
    model = build_hf(arch, folder, seed=len(out), max_shard_size='20KB' if arch == 'qwen2' else None)
    params, config = load_hf_causal(folder)
    out[arch] = (model, params, config, folder)
    if arch == 'qwen2':
      assert (folder / 'model.safetensors.index.json').is_file() and not (folder / 'model.safetensors').exists()
  return out


def _close(got, want, rows):
  got, want = np.asarray(got)[rows], np.asarray(want)[rows]
  assert np.abs(want).max() > 1.0  # logits of a real size: a misread weight would not hide under ATOL
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a == 'mistral' else a for a in ARCHS])
def test_logits_match_transformers_with_right_and_left_padding(models, arch):
  model, params, config, _ = models[arch]
  assert ('logits_dense' in params['decoder']) == (not model.config.tie_word_embeddings)
  for left in (False, True):
    tokens, valid = padded_batch(seed=3, left=left)
    assert (tokens[valid] == 0).any() or left  # id 0 is a real token somewhere
    _close(forward(config)(params, tokens, valid), hf_logits(model, tokens, valid, hf_positions(valid)), valid)


@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_inserted_prompt_matches_transformers_given_inputs_embeds(models, arch):
  """p prompt rows in front are positions 0..p-1 (GPT-2 adds its position embeddings to them), tokens follow."""
  model, params, config, _ = models[arch]
  prompt = np.random.RandomState(5).normal(scale=0.5, size=(3, config.emb_dim)).astype(np.float32)
  hooks = Hooks(inputs=PromptHook(prompt))
  for left in (False, True):
    tokens, valid = padded_batch(seed=4, left=left)
    mask = np.concatenate([np.ones((len(tokens), 3), bool), valid], axis=1)
    with torch.no_grad():
      embedded = model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.int64)).numpy()
    embeds = np.concatenate([np.broadcast_to(prompt, (len(tokens),) + prompt.shape), embedded], axis=1)
    # Right padding: transformers numbers positions itself (PEFT drops caller position ids); left: as generate().
    want = hf_logits(model, mask=mask, embeds=embeds, positions=hf_positions(mask) if left else None)
    _close(forward(config)(params, tokens, valid, hooks), want, mask)


@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_kv_prefix_matches_transformers_given_past_key_values(models, arch):
  """A K/V prefix of p rows per layer (per kv head under GQA): tokens start at position p, prefix keys unrotated."""
  from transformers import DynamicCache  # pylint: disable=g-import-not-at-top
  model, params, config, _ = models[arch]
  tokens, _ = padded_batch(seed=6)
  rows = np.random.RandomState(7).normal(size=(2, config.num_layers, len(tokens), 2, config.num_kv_heads,
                                               config.head_dim)).astype(np.float32)
  hooks = Hooks(decoder_layers=PrefixHook(rows[0], rows[1]))
  for left in (False, True):
    tokens, valid = padded_batch(seed=6, left=left)
    # transformers keeps keys [b, kv heads, p, d]; a fresh cache per call (the forward appends to it).
    past = DynamicCache(
        ddp_cache_data=[(torch.tensor(rows[0, i].transpose(0, 2, 1, 3)), torch.tensor(rows[1, i].transpose(0, 2, 1, 3)))
                        for i in range(config.num_layers)], config=model.config)
    mask = np.concatenate([np.ones((len(tokens), 2), bool), valid], axis=1)
    want = hf_logits(model, tokens, mask, positions=hf_positions(valid, offset=2) if left else None, past=past)
    _close(forward(config)(params, tokens, valid, hooks), want, valid)


def _copy(models, arch, tmp_path):
  folder = tmp_path / arch
  shutil.copytree(models[arch][3], folder)
  return folder


def _edit_config(folder, original, **changes):
  """Writes config.json as `original` (a folder's parsed config.json) with `changes`."""
  (folder / 'config.json').write_text(json.dumps(dict(original, **changes)))


def _one_line(raised):
  assert '\n' not in str(raised.value)
  return str(raised.value)


def test_config_json_decides_the_config_and_unsupported_models_are_refused(models, tmp_path):
  folder = _copy(models, 'mistral', tmp_path)
  original = json.loads((folder / 'config.json').read_text())
  config = hf_causal_config(folder)
  assert (config.num_kv_heads, config.rope_theta, config.rope_scaling, config.qkv_bias) == (1, 1000.0, None, False)
  assert hf_causal_config(models['llama'][3]).rope_scaling.original_max_positions == 64
  for changes, culprit in [(dict(architectures=['PhiForCausalLM']), 'is not one causal LM jaxprompt reads; '
                            'supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel'),
                           (dict(architectures=['MistralForCausalLM'], sliding_window=16), 'sliding-window attention'),
                           (dict(rope_parameters=dict(rope_type='yarn', factor=4.0)), "rope_type 'yarn'")]:
    _edit_config(folder, original, **changes)
    with pytest.raises(ConfigError, match=culprit) as raised:
      load_hf_causal(folder)
    assert str(folder / 'config.json') in _one_line(raised)
  with pytest.raises(ConfigError, match='implies num_kv_heads=2 but the given config has num_kv_heads=4'):
    load_hf_causal(models['llama'][3], config=models['llama'][2].replace(num_kv_heads=4))
  (folder / 'config.json').unlink()
  with pytest.raises(CheckpointError, match='config.json: no such file; a Hugging Face causal LM folder names its'):
    load_hf_causal(folder)


def test_a_missing_shard_tensor_or_wrong_shape_names_the_file_and_tensor(models, tmp_path):
  folder = _copy(models, 'qwen2', tmp_path)
  shard = sorted(folder.glob('model-*.safetensors'))[-1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=f"shard '{shard.name}' \\(holding '.*'\\) is missing") as raised:
    load_hf_causal(folder)
  _one_line(raised)
  folder = _copy(models, 'llama', tmp_path)
  original = json.loads((folder / 'config.json').read_text())
  _edit_config(folder, original, intermediate_size=48)
  with pytest.raises(
      CheckpointError, match=f"{folder / 'model.safetensors'}: tensor 'model.layers.0.mlp.gate_proj"
      r".weight' has shape \[64, 32\] but .*config.json implies \[48, 32\]") as raised:
    load_hf_causal(folder)
  _one_line(raised)
  _edit_config(folder, original)
  tensors = load_file(folder / 'model.safetensors')
  del tensors['model.layers.1.mlp.up_proj.weight']
  save_file(tensors, folder / 'model.safetensors')
  with pytest.raises(CheckpointError, match=f"{folder / 'model.safetensors'}: tensor 'model.layers.1.mlp.up_proj"
                     ".weight' is missing") as raised:
    load_hf_causal(folder)
  _one_line(raised)


def test_scanned_bfloat16_load_stacks_and_casts(models):
  _, params, config, folder = models['llama']
  got, _ = load_hf_causal(folder, config=config.replace(scan_layers=True, param_dtype=jnp.bfloat16))
  want = stack_layers(params)
  assert got['decoder']['layers']['self_attention']['key']['kernel'].shape == (2, 32, 16)
  for path in (('decoder', 'layers', 'mlp', 'wi_0', 'kernel'), ('token_embedder', 'embedding')):
    leaf, ref = got, want
    for key in path:
      leaf, ref = leaf[key], ref[key]
    assert leaf.dtype == jnp.bfloat16
    np.testing.assert_array_equal(leaf, np.asarray(ref).astype(jnp.bfloat16))


def test_gpt2_in_the_hub_layout_reads_the_same(models, tmp_path):
  """The hub's gpt2 files have no `transformer.` in front and keep the causal-mask buffers `attn.bias`."""
  _, params, _, folder = models['gpt2']
  hub = _copy(models, 'gpt2', tmp_path)
  tensors = {k.removeprefix('transformer.'): v for k, v in load_file(folder / 'model.safetensors').items()}
  tensors['h.0.attn.bias'] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  save_file(tensors, hub / 'model.safetensors')
  got, _ = load_hf_causal(hub)
  q = got['decoder']['layers_1']['self_attention']
  np.testing.assert_array_equal(q['value']['bias'], params['decoder']['layers_1']['self_attention']['value']['bias'])
  np.testing.assert_array_equal(q['query']['kernel'], tensors['h.1.attn.c_attn.weight'][:, :32])
