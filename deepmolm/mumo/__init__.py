"""MuMo: structural fusion of 2D topology and 3D geometry, injected late into a Mamba sequence stream."""
