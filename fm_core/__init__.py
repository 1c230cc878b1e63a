"""fm_core: the shared engine (config, transformer backbone, masking, batching, training)."""

from fm_core.resolvers import register_resolvers

register_resolvers()

__version__ = "0.1.0"
