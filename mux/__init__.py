"""The MUX: its data path (nftables + policy routing + VXLAN) and its BGP announcer."""
