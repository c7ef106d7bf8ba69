"""An EESZT stand-in for development, tests, demos and benchmarks.

It serves the project's own SOAP contract (``schemas/soap``) over HTTPS with mutual TLS: the STS,
the business services, the permission table, WS-Security checks, fault injection and a record of
everything it accepted. It is not the official EESZT interface.
"""
