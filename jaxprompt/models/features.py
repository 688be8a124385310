"""The model features of a batch (seqio's `EncDecFeatureConverter` output): the one list of their names. The model
consumes them and `jaxprompt.data` produces them, so they live with the model (data imports models, not back)."""
from __future__ import annotations

# [batch, length] arrays every encoder-decoder batch has; loss weights are float32, the rest int32.
FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')
# With packing (several examples per row): which example each position belongs to.
SEGMENT_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids')
# [batch] int32: which task (prompt) of a multi-task method each row uses (prompt banks, multi-task training).
TASK_FEATURE = 'task_ids'
# A decoder-only batch: one token stream per row, its next tokens, loss weights on the targets only, and its
# padding mask (int32, 1 = a real token: token id 0 is a real token in Llama / GPT-2 / Qwen2 vocabularies).
CAUSAL_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights', 'decoder_input_mask')
# With packing: each position's example and its position within it.
CAUSAL_SEGMENT_FEATURES = ('decoder_segment_ids', 'decoder_positions')
