"""Shared machinery under every study: taps, the input-space optimiser and attacks, AutoAttack,
the fit loop and training methods, distributed helpers."""
