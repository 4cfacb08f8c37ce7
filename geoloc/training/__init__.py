"""Weakly supervised NetVLAD training (Arandjelović et al., CVPR 2016), one job per module.

GPS is the only supervision: :mod:`~geoloc.training.tuples` turns positions into potential
positives and definite negatives, :mod:`~geoloc.training.mining` picks the hard ones from a
descriptor cache held in the main process, :mod:`~geoloc.training.loss` scores them,
:mod:`~geoloc.training.loop` runs epochs with validation, early stopping and checkpoints
(:mod:`~geoloc.training.checkpoint`), and :mod:`~geoloc.training.pca` fits PCA whitening on
streamed descriptors. :mod:`geoloc.finetune` wires them to models and photos.

Nothing here imports torch at module level except the modules that need it for their job.
"""
