"""What tests of every folder share: waiting, a settable clock, snapshots, agents, processes,
clients from other loopback addresses."""
