"""Aiohttp handlers of the admin and agent APIs."""
