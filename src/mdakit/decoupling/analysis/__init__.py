"""Analyses of a decoupled model's calculation paths.

- :mod:`~mdakit.decoupling.analysis.study`: every path analysis into one directory (``mdakit paths``), from
  :mod:`~mdakit.decoupling.analysis.states` (filter states), :mod:`~mdakit.decoupling.analysis.class_paths`
  (per-class paths and their masks), :mod:`~mdakit.decoupling.analysis.embedding` (t-SNE),
  :mod:`~mdakit.decoupling.analysis.hopkins` (the Hopkins decision tree),
  :mod:`~mdakit.decoupling.analysis.categories` (filter–category relation),
  :mod:`~mdakit.decoupling.analysis.filters` (top images) and :mod:`~mdakit.decoupling.analysis.occlusion`;
- :mod:`~mdakit.decoupling.analysis.detection`: adversarial-input detection (``mdakit detect``), from
  :mod:`~mdakit.decoupling.analysis.attacks` (FGSM, PGD) and :mod:`~mdakit.decoupling.analysis.detectors`.
"""
