"""pkgsandbox: each untrusted phase of a pacman transaction in its own Landlock domain."""
__version__ = "0.1.0"
