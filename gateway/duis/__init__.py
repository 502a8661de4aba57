"""DUIS XML layer: safe parsing, typed model, encoder, schema validation, XML signatures."""
