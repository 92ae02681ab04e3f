"""Ingestion: Segment messages validated into events, deduplicated and appended to their stream
partition (``service``), whole files replayed the same way (``replay``), the messages refused
(``failed_events``), and how far the dataflow is behind (``status``). The HTTP collector that
calls it is ``app.api.collector``."""
