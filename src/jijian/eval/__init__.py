"""Trust evaluation against OpenAI-compatible endpoints. Built by the guard issue; nothing here yet."""
