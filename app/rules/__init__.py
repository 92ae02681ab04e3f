"""Marketer-written rules: the YAML document's schema (``schema``), and later its compilation
and evaluation. A rule keeps one segment: customers enter when its condition holds, exit when it
stops holding."""
