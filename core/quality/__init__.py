"""Steps 7 and after: evaluating a candidate, the gate's verdicts, drift, the retrain advice."""
