"""Things with side effects: ticket delivery, rollout execution."""
