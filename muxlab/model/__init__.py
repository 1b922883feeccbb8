"""Pure logic, runs nowhere in particular: the fabric (topology), the Azure-shaped load
balancer model and its validation, the facts the managers compile from them and their
southbound rows, Maglev, and the renderers."""
