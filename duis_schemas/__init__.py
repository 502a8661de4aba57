"""duisgw's own compact DUIS XSD (package data; see README.md)."""
