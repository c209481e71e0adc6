"""Sections of ``controller.toml`` that features read, as checked models the config is made of."""
