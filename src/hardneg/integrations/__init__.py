"""Use hardneg's losses and BACL's negative selection from other training frameworks.

Each submodule imports its framework only when imported itself:

- :mod:`hardneg.integrations.sentence_transformers`: ``EGARankingLoss``, ``HCLRankingLoss``,
  ``DCLRankingLoss``, ``InfoNCERankingLoss``, ``SoftInfoNCERankingLoss`` and
  ``HardnegRankingLoss`` for ``SentenceTransformerTrainer`` (``MultipleNegativesRankingLoss``
  call convention; ``bns=BNSConfig(k=...)`` selects the negatives).
- :mod:`hardneg.integrations.open_clip`: ``OpenCLIPLossAdapter`` / ``HardnegClipLoss`` /
  ``HardnegSigLipLoss`` with open_clip's ``ClipLoss``/``SigLipLoss`` call signature, using the
  caller's ``logit_scale``/``logit_bias``.
- :mod:`hardneg.integrations.hf_trainer`: ``HardnegCLIPTrainer``, a ``transformers.Trainer`` for
  ``CLIPModel`` that also optimises the loss's temperature.

Shared pieces: :mod:`~hardneg.integrations.bns_selector` (``BNSNegativeSelector``, the BNS hook
that trains its own policy), :mod:`~hardneg.integrations.selected_loss`
(``SelectedNegativesLoss``: a loss on all or on selected negatives) and
:mod:`~hardneg.integrations.callbacks` (``BNSProgressCallback``: training progress for the
curriculum in any ``transformers.Trainer``). See docs/integrations.md.
"""
