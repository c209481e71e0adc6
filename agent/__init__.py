"""The polyfleet on-site agent: finds devices, polls them, keeps reports safe, sends them up."""
