"""The inference server (engine, paged KV cache, OpenAI API). Built by the serving issue; nothing here yet."""
