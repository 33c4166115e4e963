"""The V2I-GAN: a learned visible-to-infrared translator (NIR, SWIR, thermal), DistillMatch's
third pillar. It renders visible training images as infrared so the matcher learns
cross-modal matching from more scenes than there are real infrared pairs of.

model.py (networks), losses.py, data.py (real co-registered pairs), weights.py (files,
``translate``), train.py (``python -m dmreg.train.v2igan``). The shipped weights and their
card are in weights/.
"""
