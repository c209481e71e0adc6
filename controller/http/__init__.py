"""What the API and the dashboard share over HTTP: endpoint specs, credentials, limits, errors."""
