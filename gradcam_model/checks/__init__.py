"""The checkers: parity against eager references, map diagnoses, tolerances, runtimes, evaluation."""
