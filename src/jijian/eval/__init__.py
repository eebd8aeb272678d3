"""Quality measurement: retrieval (recall, MRR, nDCG), held-out perplexity, and RAG citations."""
