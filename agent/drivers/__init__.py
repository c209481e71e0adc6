"""Device drivers behind one contract (``base.py``)."""
