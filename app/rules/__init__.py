"""Marketer-written rules: the YAML document's schema (``schema``), its compilation to
durable_rules rulesets (``compiler``) and their evaluation (``engine``, the only importer of
durable_rules), versions and audit in SQL (``store``), the active set the dataflow follows
(``active``), and explanations and previews over stored profiles (``explain``, ``service``).
A rule keeps one segment: customers enter when its condition holds, exit when it stops."""
