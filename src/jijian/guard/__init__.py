"""Guardrails (injection defence, ACLs, PII redaction, audit). Built by the guard issue; principals and the read rule exist (principals.py)."""
