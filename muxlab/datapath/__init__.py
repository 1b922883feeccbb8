"""What the MUXes' and hosts' data paths share, pure: the conventions both sides and the
operator's tools agree on (kernel names, ports, files: conventions), Maglev hashing
(maglev), and an nftables table as data applied by difference (nfttable)."""
