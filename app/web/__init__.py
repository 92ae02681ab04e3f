"""The admin web UI (``/admin``): server-rendered pages over the same state as the API."""
