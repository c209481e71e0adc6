"""The Poly device lab: simulated REST and SSH devices on loopback."""
