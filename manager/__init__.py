"""The SLB manager (runs in manager nodes): northbound HTTP API over the replicated OVSDB."""
