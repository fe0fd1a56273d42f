"""Durable state: processed transactions, each plugin's own data, the audit log."""
