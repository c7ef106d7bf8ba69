"""The client of EESZT: SOAP templates, WS-Security signing, the HTTP transports and an
in-memory EESZT for tests."""
