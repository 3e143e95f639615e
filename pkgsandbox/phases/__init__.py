"""One module per untrusted phase; each runs its work through runner in its own domain."""
