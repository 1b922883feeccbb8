"""Runs inside lab nodes: the container entry point and supervisor, kernel helpers shared by
the agents, the managers' OVSDB client, the VM service and the traffic tools of clients."""
