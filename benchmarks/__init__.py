"""``eeszt-gw bench``: benchmark scenarios. Each prints a table of figures measured in one run."""
