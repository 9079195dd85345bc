"""Attribution methods: contribution (primary), gradient (baseline) and NAD (learned masks)."""

from mdakit.attribution.nad import NADSettings, mask_points, nad_masks

__all__ = ["NADSettings", "mask_points", "nad_masks"]
