"""Autoregressive decoding with the semantics of t5x's `decoding.py`: temperature sampling and beam search.

Both decoders drive a `tokens_to_logits(DecodingState) -> (logits [batch * beams, vocab], new_cache)` callback
inside a `lax.while_loop`. `inputs` [batch, length] is the right-shifted decoder prompt: position 0 is the BOS
token (0), non-zero tokens after it are teacher-forced, zeros are generated. Returned candidates are ordered
worst first, best last. Tokens after EOS are 0.

Cache leaves named `cache_index` (a scalar, unless decoding starts from a prefilled cache), `cached_bias`
and `position_embedder_index` have no batch axis and are never expanded, flattened or gathered along beams.

Deliberate differences from t5x (none affects the default paths): per-example temperatures draw each row with
its own key (t5x reuses one, so the copies of an example come out identical); a traced topp of 0 keeps the
whole vocabulary (t5x masks it all); beam search from a prefilled cache keeps the per-example cache_index
flattened and gathered with the beams (t5x hands the model a [batch, beams] index); top-k is one `lax.top_k`
(t5x's two-stage variant is a TPU speed-up with the same result).

Modules: `sampling` (temperature_sample), `beam` (beam_search), `common` (DecodingState and what both share);
the beam-axis / cache utilities and top-k / top-p masks are in `jaxprompt.models.beam_utils`. The public names
of all of them are re-exported here: use `decoding.beam_search`, `decoding.DecodingState`, etc.
"""
from jaxprompt.models.beam_utils import (
    add_beam_dim,
    cache_gather_beams,
    cache_map,
    flat_batch_beam_expand,
    flatten_beam_dim,
    gather_beams,
    gather_topk_beams,
    leaf_name,
    topk_mask,
    topp_mask,
    unflatten_beam_dim,
)
from jaxprompt.models.decoding.beam import BeamState, beam_search, brevity_penalty
from jaxprompt.models.decoding.common import NEG_INF, DecodingState, PyTree
from jaxprompt.models.decoding.sampling import MIN_TEMPERATURE, SamplingLoopState, temperature_sample

__all__ = [
    'MIN_TEMPERATURE',
    'NEG_INF',
    'BeamState',
    'DecodingState',
    'PyTree',
    'SamplingLoopState',
    'add_beam_dim',
    'beam_search',
    'brevity_penalty',
    'cache_gather_beams',
    'cache_map',
    'flat_batch_beam_expand',
    'flatten_beam_dim',
    'gather_beams',
    'gather_topk_beams',
    'leaf_name',
    'temperature_sample',
    'topk_mask',
    'topp_mask',
    'unflatten_beam_dim',
]
