"""The flow: the Bytewax dataflow from the event streams to profiles, segments and triggers
(``segmentation``), with its source, sinks, per-customer feature state and the rule examples
run through its shard."""
