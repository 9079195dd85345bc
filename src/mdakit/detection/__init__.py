"""Detectors: a compact anchor-free detector, its boxes, training, mAP, and class-specific disassembly.

A zoo detector (``fcos-lite``) maps an image to one dense map of box and class channels
(:mod:`mdakit.detection.model`); :mod:`mdakit.detection.boxes` decodes it into boxes and builds its training
targets; :mod:`mdakit.detection.evaluate` measures mAP; :mod:`mdakit.detection.disassembly` cuts the part
some classes rely on. :func:`mdakit.disassemble` and ``mdakit disassemble`` dispatch to it for a detector.
"""

from mdakit.detection.boxes import PostProcess, decode_boxes, detect
from mdakit.detection.evaluate import evaluate_detector, mean_average_precision, predict_detections

__all__ = ["PostProcess", "decode_boxes", "detect", "evaluate_detector", "mean_average_precision",
           "predict_detections"]
