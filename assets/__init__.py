"""Software-defined assets, one module per layer. Thin wiring around core/."""
