"""Customer profiles in Redis, written by the dataflow's sinks: the profile (``service``), the
segments' members and each customer's transitions (``segments``), the key names (``keys``), and
GDPR erasure (``erasure``)."""
