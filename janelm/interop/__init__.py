"""Hugging Face interop: JaneLM models to and from transformers model folders.

- `tokenizer_json`: tokenizers to and from the ``tokenizer.json`` format;
- `architectures`: configs and weights of JaneLM's default architecture as Llama's, and of
  learned positions + LayerNorm + GELU as GPT-2's;
- `folder`: reading a model folder into a checkpoint dict (what `janelm.checkpoint` does for
  ``-c FOLDER``), and writing one (`janelm export`), with its model card (`model_card`).

Only safetensors are read, never pickles, and no code from a model folder ever runs.
"""
