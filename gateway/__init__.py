"""duisgw: DUIS/GBCS inline gateway (DUIS model and signatures, correlation engine, state, transports, CLI)."""

__version__ = "0.1.0"
