"""muxlab: an emulator of a cloud software load balancer (Ananta / Azure SLB)."""
