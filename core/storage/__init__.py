"""The model directory: versions, their manifests, the ledger, commits, imports and exports."""
