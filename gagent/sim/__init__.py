"""Simulators that speak the real wire formats: a btcpool-compatible pool, miners, a demo."""
