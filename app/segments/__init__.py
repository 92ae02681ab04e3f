"""Segments: the rules' memberships as the dataflow keeps them in Redis, and their API."""
