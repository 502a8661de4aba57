"""The inline gateway service (``duisgw serve``): transport shell around the decision pipeline.

``api`` (the Processor seam), ``config`` (TOML → typed config), ``ingress`` (DSP-side HTTP),
``outbox`` (SQLite store, outbox, rejects), ``delivery`` (ordered retrying egress), ``mqtt``,
``metrics``, ``tls``, ``logs`` and ``app`` (assembly and lifecycle).
"""
