"""Logins to EESZT: the token cache, its sharing between worker processes, and the
coordinator of doctors' interactive logins with its backends."""
