"""Accuracy-budgeted search over recipes of every family, with a Pareto front and a report.

>>> from slimkit.autosearch import search
>>> result = search("builtin:lenet-300-100", max_drop=0.5, out="lenet-search", budget="20m")
>>> result.best["ratio"], result.best["test_drop_pts"], result.certified, result.report
"""

from slimkit.autosearch.budget import parse_duration
from slimkit.autosearch.certify import Certification
from slimkit.autosearch.finish import SearchResult
from slimkit.autosearch.run import Progress, search

__all__ = ["Certification", "Progress", "SearchResult", "parse_duration", "search"]
