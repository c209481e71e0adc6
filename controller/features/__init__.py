"""Use cases, each written once: the API, the dashboard and the CLI only translate to them."""
