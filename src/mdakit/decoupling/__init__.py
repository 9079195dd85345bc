"""Architecture decoupling: gated fine-tuning, calculation paths and dynamic inference (DESIGN §2.4)."""
