"""Training recipes: one module per recipe, registered by name (see registry.py and base.py)."""
