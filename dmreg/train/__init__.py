"""Training of the learned DistillMatch matcher, starting from its data.

Training pairs are co-located images from different modalities with a known geometric
relation: real cross-spectral band pairs of one scene (co-registered by the data
provider) and optical bands paired with simulated infrared, SAR or map renderings of
themselves, image1 warped by a random homography that is the ground truth.
"""
