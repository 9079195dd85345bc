"""Architecture decoupling: gated fine-tuning, calculation paths and dynamic inference.

- :mod:`~mdakit.decoupling.gates`: controlling modules and the gated model (:class:`DecoupledNet`),
  which registers the ``decoupled`` structural edit of model cards;
- :mod:`~mdakit.decoupling.losses`: the decoupling loss (Eq. 12);
- :mod:`~mdakit.decoupling.finetune`: fine-tuning, settling, and :func:`decouple` from a model and its data;
- :mod:`~mdakit.decoupling.calibration`: BatchNorm re-estimation and the heads' warm start;
- :mod:`~mdakit.decoupling.paths`: every input's calculation path (:func:`collect_paths`);
- :mod:`~mdakit.decoupling.dynamic` / :mod:`~mdakit.decoupling.dynamic_layers`: inference that
  computes only the selected filters;
- :mod:`~mdakit.decoupling.ungated`: the decoupled model without its gates, for the static tools;
- :mod:`mdakit.decoupling.analysis`: the path analyses (``mdakit paths``) and adversarial-input
  detection (``mdakit detect``).
"""
