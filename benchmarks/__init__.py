"""Performance goals, one script each; ``python -m benchmarks.run_all`` runs them all."""
