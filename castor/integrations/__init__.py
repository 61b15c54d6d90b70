"""Integrations with other tools' SDKs, each behind its own extra (docs/integrations.md)."""
