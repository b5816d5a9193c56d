"""Planning: the cells of grid files, derived grids, resources and GPU-memory estimates."""
