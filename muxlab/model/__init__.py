"""Pure logic, runs nowhere in particular: the fabric (topology), the Azure-shaped service
model and its validation, what agents compile from them, Maglev, and the renderers."""
