"""P-tuning v1 (`jaxprompt.methods.p_tuning`): the prompt encoders against PyTorch modules built like THUDM's and
PEFT's, the inference form (plain prompt tuning) and its prompt.npy, decoding through the cache, the train
step, overfitting, the gin file; and the sharded step of both new methods on 8 simulated devices."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands.prompt_files import load_prompt
from jaxprompt.errors import ConfigError
from jaxprompt.formats import npy_io
from jaxprompt.methods import p_tuning as pt
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.base import LossConfig
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim
from tests.helpers import REPO, assert_trees_equal
from tests.method_helpers import assert_decoding_matches_recomputation, make_batch, random_batch, train

P = 5


@pytest.fixture(scope='module')
def fixture_model(fixtures_dir):
  return get_config('t5x_tiny'), load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


def _torch_encoder(torch, method: pt.PTuning, trainable):
  """The reference's modules (THUDM: LSTM + Linear/ReLU/Linear; PEFT: Linear/ReLU x2 + Linear) holding our
  values, as a function () -> prompt [P, d]."""
  nn = torch.nn
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  embeds = t(trainable['embedding'])[None]
  mlp = trainable['mlp']
  if method.encoder == 'mlp':
    head = nn.Sequential(nn.Linear(method.embed_dim, method.width), nn.ReLU(), nn.Linear(method.width, method.width),
                         nn.ReLU(), nn.Linear(method.width, method.embed_dim))
    dense = [head[0], head[2], head[4]]
    lstm = None
  else:
    h = method.width // 2
    lstm = nn.LSTM(input_size=method.embed_dim, hidden_size=h, num_layers=method.lstm_layers, bidirectional=True,
                   batch_first=True)
    head = nn.Sequential(nn.Linear(method.width, method.width), nn.ReLU(), nn.Linear(method.width, method.embed_dim))
    dense = [head[0], head[2]]
    with torch.no_grad():
      for i in range(method.lstm_layers):
        for direction, suffix in (('forward', ''), ('backward', '_reverse')):
          ours = trainable['lstm'][f'layer_{i}'][direction]
          getattr(lstm, f'weight_ih_l{i}{suffix}').copy_(t(ours['kernel_in']).T)
          getattr(lstm, f'weight_hh_l{i}{suffix}').copy_(t(ours['kernel_hidden']).T)
          getattr(lstm, f'bias_ih_l{i}{suffix}').copy_(t(ours['bias']))
          getattr(lstm, f'bias_hh_l{i}{suffix}').zero_()
  with torch.no_grad():
    for j, layer in enumerate(dense):
      layer.weight.copy_(t(mlp[f'dense_{j}']['kernel']).T)
      layer.bias.copy_(t(mlp[f'dense_{j}']['bias']))
    x = embeds if lstm is None else lstm(embeds)[0]
    return head(x)[0].numpy()


@pytest.mark.parametrize('encoder,hidden', [('lstm', None), ('lstm', 12), ('mlp', 48)])
def test_encoder_equals_the_pytorch_reference_modules(fixture_model, encoder, hidden):
  torch = pytest.importorskip('torch')
  cfg, frozen = fixture_model
  method = pt.p_tuning(cfg, length=P, encoder=encoder, hidden=hidden)
  trainable = method.init(jax.random.PRNGKey(0), frozen)
  np.testing.assert_allclose(method.prompt(trainable), _torch_encoder(torch, method, trainable), atol=1e-5)


def test_layout_init_and_errors(fixture_model):
  cfg, frozen = fixture_model
  lstm = pt.p_tuning(cfg, length=P)
  trainable = lstm.init(jax.random.PRNGKey(0), frozen)
  d, h = cfg.emb_dim, cfg.emb_dim // 2  # THUDM: hidden = d, d/2 per direction
  assert trainable['lstm']['layer_1']['backward']['kernel_in'].shape == (d, 4 * h)
  assert trainable['lstm']['layer_0']['forward']['kernel_hidden'].shape == (h, 4 * h)
  assert trainable['mlp']['dense_1']['kernel'].shape == (d, d)
  # PyTorch's initial distributions: N(0, 1) embeddings, U(+-1/sqrt(h)) LSTM, U(+-1/sqrt(fan_in)) Linear.
  assert 0.7 < float(jnp.std(trainable['embedding'])) < 1.3
  assert float(jnp.abs(trainable['lstm']['layer_0']['forward']['kernel_in']).max()) <= h**-0.5
  assert float(jnp.abs(trainable['mlp']['dense_0']['kernel']).max()) <= d**-0.5
  boxed = lstm.abstract(None)
  assert jax.tree.map(lambda a: a.shape, trainable) == jax.tree.map(lambda b: b.value.shape, boxed,
                                                                    is_leaf=lambda x: hasattr(x, 'names'))
  assert boxed['embedding'].names == ('prompt', 'prompt_embed')
  assert boxed['mlp']['dense_1']['kernel'].names == (None, 'prompt_embed')
  assert lstm.packing_slots == P
  with pytest.raises(ConfigError, match="combine='prefix'"):
    pt.p_tuning(cfg, length=P, combine='suffix_after_eos').packing_slots  # pylint: disable=expression-not-assigned
  with pytest.raises(ConfigError, match='encoder'):
    pt.p_tuning(cfg, encoder='gru')
  with pytest.raises(ConfigError, match='even'):
    pt.p_tuning(cfg, hidden=7)


def test_inference_form_gives_the_training_logits_and_prompt_npy_loads_back(fixture_model, tmp_path):
  cfg, frozen = fixture_model
  batch = random_batch()
  for encoder in ('lstm',):  # the inference form does not depend on the encoder (both are checked above)
    method = pt.p_tuning(cfg, length=P, encoder=encoder, combine='prefix_after_bos')
    trainable = method.init(jax.random.PRNGKey(1), frozen)
    plain, computed = method.inference(trainable)
    assert isinstance(plain, PromptTuning) and (plain.length, plain.combine) == (P, 'prefix_after_bos')
    assert jax.tree.map(jnp.shape, computed) == {'prompt': (P, cfg.emb_dim)}
    want = jax.jit(build_model(cfg, method).logits)(frozen, trainable, batch)
    np.testing.assert_allclose(jax.jit(build_model(cfg, plain).logits)(frozen, computed, batch), want, atol=1e-5)
    files = method.numpy_copy(trainable)
    assert list(files) == ['prompt.npy'] and files['prompt.npy'].dtype == np.float32
    np.testing.assert_array_equal(files['prompt.npy'], np.asarray(computed['prompt'], np.float32))
    path = npy_io.write_npy(files['prompt.npy'], tmp_path / encoder / 'prompt.npy')
    loaded = load_prompt(prompt_file=path, checkpoint=None, step=None, prompt_length=None, embed_dim=cfg.emb_dim)
    np.testing.assert_array_equal(loaded, files['prompt.npy'])


@pytest.mark.slow
def test_cached_decoding_equals_recomputation(fixture_model):
  cfg, frozen = fixture_model
  method = pt.p_tuning(cfg, length=P)
  trainable = method.init(jax.random.PRNGKey(2), frozen)
  assert_decoding_matches_recomputation(build_model(cfg, method), frozen, trainable, random_batch(seed=3), length=5)


def test_train_step_keeps_frozen_weights_and_has_optimizer_state_for_the_encoder_only(fixture_model):
  cfg, frozen = fixture_model
  before = jax.tree.map(np.array, frozen)
  method = pt.p_tuning(cfg, length=P, encoder='mlp', hidden=24, dropout=0.0)
  state, history = train(build_model(cfg, method), frozen, random_batch(), 4,
                         optim.make_optimizer(optim.adam, learning_rate=0.01))
  assert history[-1] < history[0]
  assert_trees_equal(frozen, before)
  shapes = sorted(np.shape(x) for x in jax.tree.leaves(state.trainable))
  moments = sorted(np.shape(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))
  assert moments == sorted(shapes * 2)  # Adam's two moments of the encoder's leaves, nothing else


@pytest.mark.slow
@pytest.mark.parametrize('encoder', pt.ENCODERS)
def test_overfits_eight_examples(fixture_model, encoder):
  """Eight inputs, one target the fixture's random output layer can express (see test_prompt_tuning)."""
  cfg, frozen = fixture_model
  model = build_model(cfg, pt.p_tuning(cfg, length=P, encoder=encoder), LossConfig(reduction='mean'))
  rs = np.random.RandomState(0)
  enc = rs.randint(2, 128, (8, 6))
  enc[:, -1] = 1
  _, history = train(model, frozen, make_batch(enc, np.tile([[26, 83, 1]], (8, 1))), 40, optim.make_optimizer())
  assert history[-1] <= 0.55 * history[0], (history[0], history[-1])


def test_dropout_needs_and_uses_the_hook_rng(fixture_model):
  cfg, frozen = fixture_model
  method = pt.p_tuning(cfg, length=P, lstm_layers=2, dropout=0.5)
  trainable = method.init(jax.random.PRNGKey(3), frozen)
  with pytest.raises(ConfigError, match='rng'):
    method.prompt(trainable, deterministic=False)
  a, b = (method.prompt(trainable, deterministic=False, rng=jax.random.PRNGKey(s)) for s in (0, 1))
  assert np.abs(a - b).max() > 1e-4
  np.testing.assert_array_equal(method.prompt(trainable),
                                method.prompt(trainable, deterministic=True, rng=jax.random.PRNGKey(0)))


def test_gin_file_binds_the_method(fixture_model):
  cfg, _ = fixture_model
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(REPO / 'gin_configs' / 'methods' / 'p_tuning.gin')],
                                        ["jaxprompt.methods.p_tuning.encoder = 'mlp'"])
    assert gin.query_parameter('%METHOD').selector == 'jaxprompt.methods.p_tuning'
    method = pt.p_tuning(cfg)
  finally:
    gin.clear_config()
  assert (method.length, method.encoder, method.width, method.lstm_layers) == (9, 'mlp', cfg.emb_dim, 2)
