"""The load balancer, pure: the Azure-shaped document and its checks (azure, check), what the
managers allocate and compile from it (allocation, compiler) into flat facts (facts), those
facts as southbound rows (southbound) and the rows' rule (rows), the difference of two
documents (diff), the published schemas (schemas), and the IMDS documents a host serves its
VMs from the facts (metadata)."""
