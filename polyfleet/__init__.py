"""The ``polyfleet`` command: one entry point for the lab, agent, controller and demo."""
