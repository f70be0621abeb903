"""GPU kernels and attention backends, each with a plain-torch reference.

Imports nothing of ours."""
