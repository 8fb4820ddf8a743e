"""The engine and everything it owns: config, model, registry, ledger, metrics."""
