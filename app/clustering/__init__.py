"""Behavioural clusters: a model fitted on a sample of profiles (``fitting``), chosen by measured
quality, with ids kept across refits and readable names (``identity``), published to Redis and
assigned to every feature snapshot in the dataflow (``model``), refitted by ``service``."""
