"""The base layer: settings, errors, ids, logs, metrics, caches, rate limits, the database,
tenants and audit.  It imports nothing above it (import-linter checks; pyproject.toml)."""
