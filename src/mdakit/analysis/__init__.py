"""Analyses of per-class sub-architectures, for masks from any method (NAD §4).

- :mod:`~mdakit.analysis.accuracy`: each class's sub-architecture on its own test images (Fig. 2);
- :mod:`~mdakit.analysis.similarity`: per-layer Jaccard similarity between classes (Fig. 4, row 1);
- :mod:`~mdakit.analysis.hit_rate`: hit rate on 2×2 mosaics (Fig. 4, row 2);
- :mod:`~mdakit.analysis.misclassification`: similarity of true and mistaken classes (Table 1, Fig. 5);
- :mod:`~mdakit.analysis.run`: all of them into JSON + PNG files (``mdakit analyze``).
"""

from mdakit.analysis.accuracy import AccuracyResult, histogram, sub_architecture_accuracy
from mdakit.analysis.hit_rate import HitRateResult, hit_rates, mosaic_hit_rate
from mdakit.analysis.misclassification import misclassification_analysis, misclassification_stats, most_similar
from mdakit.analysis.run import analyze, load_target, run_analyses, write_analyses
from mdakit.analysis.similarity import jaccard_matrices, layer_similarity, similarity_matrix
from mdakit.analysis.subarch import sub_architecture, whole_network_masks

__all__ = ["AccuracyResult", "HitRateResult", "analyze", "histogram", "hit_rates", "jaccard_matrices",
           "layer_similarity", "load_target", "misclassification_analysis", "misclassification_stats",
           "mosaic_hit_rate", "most_similar", "run_analyses", "similarity_matrix", "sub_architecture",
           "sub_architecture_accuracy", "whole_network_masks", "write_analyses"]
