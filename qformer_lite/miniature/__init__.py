"""BLIP-2 in miniature: a synthetic world of shapes, two small frozen stand-ins, both training
stages and the ``qformer-lite`` command, all on a laptop CPU (chapters 6 and 7). The map of
this folder is its README.md."""
