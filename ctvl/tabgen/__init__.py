"""Synthetic survival tables (paper 003, CK4Gen) and the generators they are compared with.

- :mod:`ctvl.tabgen.postprocess` -- restores ranges, whole numbers and dtypes of generated covariates;
- :mod:`ctvl.tabgen.outcomes` -- event and duration for synthetic covariates: drawn from a Breslow
  survival curve and the real censoring distribution;
- :mod:`ctvl.tabgen.dcm` -- the Deep Cox Mixture encoder and the SynthNet decoder (torch modules);
- :mod:`ctvl.tabgen.ck4gen` -- CK4Gen: fit (teacher, distillation, reconstruction), sample, save/load;
- :mod:`ctvl.tabgen.baselines` -- Gaussian copula, TVAE (ctgan) and bootstrap resampling;
- :mod:`ctvl.tabgen.utility` -- real-vs-synthetic fidelity, utility and privacy measures.

The package sits above ``ctvl.data`` (its tables and encoder) and ``ctvl.survival`` (Cox fits, curves,
metrics); ``ctvl.infer.synth_report`` draws its report and ``ctvl.workflows.synth_tabular`` runs the CLI.
"""
