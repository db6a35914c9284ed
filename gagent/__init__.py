"""gagent: a stratum proxy that speaks the compact BTCAgent protocol to btcpool-style pools."""

__version__ = "0.1.0"
