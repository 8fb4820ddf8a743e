"""The model directory: versions, their manifests and reports (typed: manifest.py, report.py), the ledger, commits, imports and exports."""
