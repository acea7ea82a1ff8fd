"""The model: densities, experts and gates (building blocks, nn.Modules) composed into a mixture.
Imports nothing else of the package."""
