"""The polyfleet controller: stores what agents report, judges it, acts on it."""
