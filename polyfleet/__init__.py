"""The ``polyfleet`` command: one entry point for the lab, the agent, the controller and the demo."""
