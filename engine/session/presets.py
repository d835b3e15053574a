"""Model presets: names the CLI offers, kept free of torch imports so that --help is instant."""

from __future__ import annotations

from typing import Any

# Decoder demos: shapes of small real architectures, random weights, the MiniLM tokenizer's vocab.
PRESETS: dict[str, dict[str, Any]] = {
    "minilm": {"about": "all-MiniLM-L6-v2, real weights (BERT encoder, 6 layers × 384)"},
    "tiny-gpt2": {"about": "GPT-2 architecture, 6 layers × 384, RANDOM weights",
                  "arch": "gpt2", "n_layer": 6, "n_embd": 384, "n_head": 6},
    "tiny-llama": {"about": "Llama architecture, 6 layers × 384 (GQA 6/2 heads), RANDOM weights",
                   "arch": "llama", "num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1024,
                   "num_attention_heads": 6, "num_key_value_heads": 2},
    "gpt2-shape": {"about": "GPT-2 small shape, 12 layers × 768, RANDOM weights (benchmarks)",
                   "arch": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},
}
