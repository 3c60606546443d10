"""Synthetic chest-CT cohort with known findings, reports and survival truth, plus benchmark-sized volumes.

Modules, in import order (each imports only those above it):

- :mod:`~ctvl.data.synthetic.anatomy`: reference anatomy (tissue labels, lobes, organ shapes,
  skeleton levels).
- :mod:`~ctvl.data.synthetic.findings`: what a case holds (:class:`Findings`, sampled by
  :func:`make_findings`) and its TNM stage.
- :mod:`~ctvl.data.synthetic.phantom`: draws a case as a label map and an HU volume (:func:`make_volume`).
- :mod:`~ctvl.data.synthetic.reports`: the CT-RATE style report of a case (:func:`make_report`).
- :mod:`~ctvl.data.synthetic.cohort`: clinical covariates, staging error and the proportional-hazards
  survival truth (times from :mod:`ctvl.survival.simulate`), one table per cohort (:func:`make_cohort`).
- :mod:`~ctvl.data.synthetic.files`: the cohort on disk in CT-RATE's layout (:func:`write_cohort`).
- :mod:`~ctvl.data.synthetic.ctrate_like`: CT-RATE-sized volumes without findings for throughput
  benchmarks (independent of the others; import it from its module).

Entry points (importable from ``ctvl.data.synthetic``)::

    df, findings = make_cohort(SyntheticCohortConfig(n_cases=20))   # tables, no files
    paths = write_cohort(SyntheticCohortConfig(n_cases=20), "cohort/")  # CT-RATE layout + manifest.csv
"""

from __future__ import annotations

from ctvl.data.synthetic.cohort import (
    compute_clinical_features,
    compute_image_features,
    compute_log_hazard,
    make_case_volume,
    make_clinical,
    make_cohort,
    oracle_c_index,
    volume_relpath,
)
from ctvl.data.synthetic.files import CohortPaths, load_findings, write_cohort
from ctvl.data.synthetic.findings import (
    Findings,
    Lesion,
    LymphNode,
    compute_stage,
    compute_tnm,
    make_findings,
)
from ctvl.data.synthetic.phantom import make_label_map, make_volume
from ctvl.data.synthetic.reports import make_report

__all__ = [
    "make_cohort",
    "make_case_volume",
    "make_clinical",
    "compute_image_features",
    "compute_clinical_features",
    "compute_log_hazard",
    "oracle_c_index",
    "volume_relpath",
    "write_cohort",
    "load_findings",
    "CohortPaths",
    "Findings",
    "LymphNode",
    "Lesion",
    "make_findings",
    "compute_tnm",
    "compute_stage",
    "make_volume",
    "make_label_map",
    "make_report",
]
