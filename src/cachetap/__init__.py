"""cachetap: a passive HTTP cache accelerator for LANs."""

__version__ = "0.1.0"
