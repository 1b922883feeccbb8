"""The pure parts of the observation tools: a packet's walk assembled from kernel evidence
(pathwalk; `muxlab trace` collects the evidence)."""
