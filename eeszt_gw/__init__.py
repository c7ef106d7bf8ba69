"""eeszt-gateway's command line: the one place that joins the packages together."""

__version__ = "0.1.0"
