"""Framework-independent pieces of `forge demo`: a tiny char tokenizer, a Llama-shaped model, an addition task, GRPO, and generators."""
