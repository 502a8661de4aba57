"""GBCS codec and crypto: pure bytes in, values out (no I/O, no clocks)."""
