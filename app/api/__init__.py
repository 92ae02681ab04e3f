"""The HTTP face of Segflow: the collector (``/v1``, write keys), the admin API (``/api``,
the admin token) and the probes. Routers only: each view parses, calls one service of the
domain and answers; nothing below this package imports it."""
