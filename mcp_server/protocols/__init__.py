"""Reaching plugins: which address serves which protocol, pooled channels, breakers, bulkheads."""
