"""Guardrails (injection defence, ACLs, PII redaction, audit). Built by the guard issue; nothing here yet."""
