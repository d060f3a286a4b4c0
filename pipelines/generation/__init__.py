"""Parts of the generation stage: config, prompts, resumable outputs, HF and vLLM backends."""
