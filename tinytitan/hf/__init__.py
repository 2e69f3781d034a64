"""Hugging Face interop: what `transformers` calls our tensors and config (`mapping`), tokenizer files
that give sentencepiece's ids (`tokenizer`), and Hugging Face model folders read and written
(`folder`). Nothing here is needed for training."""
