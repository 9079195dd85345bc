"""Architecture decoupling: gated fine-tuning, calculation paths and dynamic inference (docs/methods.md#decoupling)."""
