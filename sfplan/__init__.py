"""sfplan: long-horizon visual planning with a learned video world model (SlowFast-VGen)."""
__version__ = "0.1.0"
