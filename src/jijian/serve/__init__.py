"""The inference server: engine (scheduler, paged KV cache, runner), OpenAI-compatible API, RAG and adapters."""
