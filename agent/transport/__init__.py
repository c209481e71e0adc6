"""Device transports: REST over pinned TLS, SSH with pinned host keys."""
