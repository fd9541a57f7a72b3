"""Search: scoring, the ANN index and metadata filters (``where.py``)."""
