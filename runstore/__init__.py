"""runstore package."""
