"""Attribution methods behind one interface, registered by name: contribution (primary), gradient
(baseline) and NAD (learned masks); see :mod:`mdakit.attribution.base`.

>>> from mdakit.attribution import available_methods, get_method
>>> [get_method(name).settings_type.__name__ for name in available_methods()]
['ContributionSettings', 'GradientSettings', 'NADSettings']
"""

from mdakit.attribution.base import AttributionMethod, SumsAttribution, available_methods, get_method, register_method
from mdakit.attribution.contribution import ContributionMethod, ContributionSettings
from mdakit.attribution.gradient import GradientMethod, GradientSettings
from mdakit.attribution.nad import NADMethod, NADSettings, nad_masks
from mdakit.attribution.nad_points import mask_points

__all__ = ["AttributionMethod", "ContributionMethod", "ContributionSettings", "GradientMethod", "GradientSettings",
           "NADMethod", "NADSettings", "SumsAttribution", "available_methods", "get_method", "mask_points",
           "nad_masks", "register_method"]
