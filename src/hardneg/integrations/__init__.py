"""Use hardneg's losses and BACL's negative selection from other training frameworks.

Each submodule imports its framework only when imported itself:

- :mod:`hardneg.integrations.sentence_transformers`: ``EGARankingLoss``, ``HCLRankingLoss``,
  ``DCLRankingLoss``, ``InfoNCERankingLoss``, ``SoftInfoNCERankingLoss`` and
  ``HardnegRankingLoss`` for ``SentenceTransformerTrainer`` (``MultipleNegativesRankingLoss``
  call convention, ``directions``, ``compute_loss_from_embeddings``; ``bns=BNSConfig(k=...)``
  selects the negatives); :mod:`~hardneg.integrations.st_evaluator`: ``RetrievalEvaluator``.
- :mod:`hardneg.integrations.open_clip`: ``OpenCLIPLossAdapter`` / ``HardnegClipLoss`` /
  ``HardnegSigLipLoss`` with open_clip's ``ClipLoss``/``SigLipLoss`` call signature, using the
  caller's ``logit_scale``/``logit_bias``.
- :mod:`hardneg.integrations.open_clip_train`: ``python -m hardneg.integrations.open_clip_train
  --hardneg-loss ega --hardneg-miner bns ...`` runs open_clip's own training script with them.
- :mod:`hardneg.integrations.hf_trainer`: ``HardnegCLIPTrainer``, a ``transformers.Trainer`` for
  ``CLIPModel`` that also optimises the loss's temperature, and ``RetrievalMetrics``
  (``compute_metrics``).

Shared pieces: the miner of :mod:`hardneg.miners` (``BoundaryAwareMiner``, which trains its
own policy, and ``MinedLoss``: a loss on all or on the mined negatives), the same the hardneg
trainer uses, and :mod:`~hardneg.integrations.callbacks` (``BNSProgressCallback``: progress,
one policy step per optimiser step and checkpoints of the miner in any
``transformers.Trainer``). See docs/integrations.md.
"""
