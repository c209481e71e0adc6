"""Durable storage behind the small ``Store`` protocol."""
