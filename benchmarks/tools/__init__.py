"""Tools: the docs' results generator, the mosaic data maker, the serve page screenshot."""
