"""SIFT with ratio test and mutual check: strong within one modality, weak across."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dmreg.matchers.base import TileMatches, TilePair


@dataclass
class SiftMatcher:
    max_keypoints: int = 4000
    ratio: float = 0.8
    name: str = "sift"
    rotation_step_deg: float = 360.0  # rotation invariant: one orientation suffices

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": None, "device": "cpu"}

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        sift = cv2.SIFT_create(nfeatures=self.max_keypoints)
        return [self._match_pair(sift, p) for p in pairs]

    def _match_pair(self, sift: cv2.SIFT, pair: TilePair) -> TileMatches:
        kr, dr = _detect(sift, pair.ref, pair.ref_valid)
        km, dm = _detect(sift, pair.mov, pair.mov_valid)
        if dr is None or dm is None or len(kr) < 2 or len(km) < 2:
            return TileMatches()
        bf = cv2.BFMatcher(cv2.NORM_L2)
        forward = bf.knnMatch(dm, dr, k=2)
        backward = {m.queryIdx: m.trainIdx for m in bf.match(dr, dm)}
        ref_pts, mov_pts, conf = [], [], []
        for pair_ in forward:
            if len(pair_) < 2:
                continue
            best, second = pair_
            ratio = best.distance / max(second.distance, 1e-9)
            if ratio > self.ratio or backward.get(best.trainIdx) != best.queryIdx:
                continue
            m_xy = np.array(km[best.queryIdx].pt) + 0.5
            r_xy = np.array(kr[best.trainIdx].pt) + 0.5
            if np.hypot(*(r_xy - m_xy)) > 1.5 * pair.max_offset + 4:
                continue
            mov_pts.append(m_xy)
            ref_pts.append(r_xy)
            conf.append(1.0 - ratio)
        if not conf:
            return TileMatches()
        return TileMatches(np.array(ref_pts), np.array(mov_pts), np.array(conf))


def _detect(sift: cv2.SIFT, img: np.ndarray, valid: np.ndarray):
    u8 = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    mask = cv2.erode(valid.astype(np.uint8), np.ones((7, 7), np.uint8))
    return sift.detectAndCompute(u8, mask)
