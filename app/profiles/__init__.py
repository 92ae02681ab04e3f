"""Customer profiles in Redis: written by the dataflow's sinks, read by the admin API."""
