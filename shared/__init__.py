"""What the agent and the controller both speak: wire schema, version parsing, errors."""
