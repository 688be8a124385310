"""The model features of a batch: the one list of their names per model family. The model consumes them and
`jaxprompt.data` produces them (`data/converters.py` picks a family's), so they live with the model (data imports
models, not back)."""
from __future__ import annotations

# Encoder-decoder (T5; seqio's `EncDecFeatureConverter` output): [batch, length] arrays every batch has; loss weights
# are float32, the rest int32.
FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')
# With packing (several examples per row): which example each position belongs to.
SEGMENT_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids')
# Decoder-only (causal LM; `data/causal.py`): one token stream per row, [batch, length]. decoder_input_tokens is the
# stream ([BOS] + inputs + targets), decoder_target_tokens the next token at each position (targets end in EOS),
# decoder_loss_weights float32 1 exactly where that next token is a target, decoder_input_mask int32 1 on real
# tokens (token id 0 is a real token in GPT-2, Llama 3 and Qwen2: padding is never told from the ids).
CAUSAL_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights', 'decoder_input_mask')
# With packing: which example each position belongs to, and its position within it (0 at its first token, counting
# its prompt slots), for rotary / learned positions.
CAUSAL_PACKING_FEATURES = ('decoder_segment_ids', 'decoder_positions')
# Encoder-only (BERT / RoBERTa): [batch, length] int32 token ids ([CLS] / <s> first) and 1 on real tokens.
ENCODER_FEATURES = ('encoder_input_tokens', 'encoder_input_mask')
# Token classification (tagging): each word's label id on its first sub-token, IGNORE_LABEL everywhere else
# (its other sub-tokens, [CLS] / [SEP], padding), as transformers' token-classification models take `labels`.
TAGGING_FEATURES = ENCODER_FEATURES + ('token_labels',)
IGNORE_LABEL = -100
# Sentence pairs (GLUE's MNLI, RTE, ...): 0 on the first segment ([CLS] a [SEP]), 1 on the second (b [SEP]), as
# BERT's token_type_ids; absent means all 0 (RoBERTa has one type).
TOKEN_TYPES = 'encoder_token_types'
# A head's label: [batch] int32 class id (sequence classification; multiple choice: the right choice's index) ...
CLASS_LABEL = 'labels'
# ... or [batch] float32 value (regression, STS-B).
REGRESSION_LABEL = 'label_values'
# Multiple choice (COPA / SWAG): encoder_input_tokens, encoder_input_mask (and encoder_token_types) are
# [batch, choices, length], one row per choice; `labels` [batch] the right choice.
CHOICE_FEATURES = ENCODER_FEATURES + (CLASS_LABEL,)
# Every family's float features (the rest are int32).
FLOAT_FEATURES = ('decoder_loss_weights', REGRESSION_LABEL)
# [batch] int32: which task (prompt) of a multi-task method each row uses (prompt banks, multi-task training).
TASK_FEATURE = 'task_ids'
# Placeholder id of a reserved prompt position in packed rows (any non-zero id: seqio packing counts non-zero ids as
# tokens); the method overwrites its embedding with a prompt row.
PROMPT_SLOT_ID = 1
