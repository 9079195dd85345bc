"""Looking inside: decision routes, contribution patterns and one self-contained HTML report per run.

- :mod:`~mdakit.report.routes` / :mod:`~mdakit.report.route_plot` / :mod:`~mdakit.report.decision`:
  per-class decision routes and one input's route against its class's (``mdakit routes``);
- :mod:`~mdakit.report.patterns`: contribution patterns per layer and class (``mdakit patterns``);
- :mod:`~mdakit.report.build`: the HTML page (``mdakit report``), from
  :mod:`~mdakit.report.items` (what each directory is), :mod:`~mdakit.report.summary` (the front: what
  was cut and joined, accuracy and size against the originals), :mod:`~mdakit.report.model_sections`,
  :mod:`~mdakit.report.file_sections` and :mod:`~mdakit.report.markup` (escaped HTML builders).
"""

from mdakit.report.build import build_report, write_report
from mdakit.report.context import ReportOptions
from mdakit.report.contrib import ClassAttribution, attribute, sample_sums, settings_from_record
from mdakit.report.decision import RouteMap, first_misclassified, probe_image, route_map, write_route_map
from mdakit.report.patterns import contribution_patterns, pattern_figure, write_patterns
from mdakit.report.routes import Route, columns, compare, input_route, route_from_masks

__all__ = ["ClassAttribution", "ReportOptions", "Route", "RouteMap", "attribute", "build_report", "columns",
           "compare", "contribution_patterns", "first_misclassified", "input_route", "pattern_figure",
           "probe_image", "route_from_masks", "route_map", "sample_sums", "settings_from_record", "write_patterns",
           "write_report", "write_route_map"]
