"""File names and tree keys that several layers read or write: each is defined here once."""
from __future__ import annotations

# A prompt's trainable tree is {PROMPT_KEY: [P, d]} (prompt tuning, P-tuning's computed prompt, one bank row).
PROMPT_KEY = 'prompt'
# The prompt's file in a checkpoint step dir, and the name of the demo's exported prompt.
PROMPT_FILE = 'prompt.npy'
# The gin configuration a training run saves in MODEL_DIR (export and eval / infer on a run directory read it).
RUN_CONFIG_FILE = 'config.gin'
