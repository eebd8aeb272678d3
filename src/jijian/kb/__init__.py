"""The knowledge base (collections, vector + lexical search). Built by the knowledge-base issue; nothing here yet."""
