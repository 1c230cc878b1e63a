"""tasks: downstream heads and their metrics (structure, drug properties, code completion)."""
