"""Image backbones."""
