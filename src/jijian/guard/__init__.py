"""Guardrails: injection defence, ACLs, PII redaction, audit (built by the guard issue).

Principals and the one read rule for ACLs live in `jijian.guard.principals`.
"""
