"""The host agent: terminates VXLAN, NATs VIP to DIP, lets replies go straight back (DSR)."""
