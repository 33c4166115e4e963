"""The training/validation split of every scene dmreg's learned models see. Written once,
before any validation number was looked at (2026-12-01), and not to be changed after:
a number measured on a scene that later moves into training is no longer a
held-out number.

Whole scenes (sites, patches, acquisitions) are split, never crops of one scene: crops
of one place share its ground, so a crop-level split would leak. Sentinel-2 patches of
one acquisition can be adjacent (BigEarthNet cuts tiles into 1.2 km patches), so the
BigEarthNet split goes by acquisition.

``VALIDATION_ONLY`` collections never enter training at all, whatever the split says:
RoadScene has no licence that allows shipping a model trained on it, and the QGIS
map tiles are GPL-2.0 (see ../shared/data/README.md).
"""

from __future__ import annotations

HELD_OUT_SCENES = ("L7_ETMs",)
"""The Landsat 7 sample scene: the accuracy tests, benchmarks and model cards evaluate on it."""

TERRAMIND_VALIDATION_SITES = ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1")
"""TerraMind (IBM/terramind examples) sites held out; 609U_541L_3_0 and 637U_59R_1_3 train."""

BIGEARTHNET_VALIDATION_ACQUISITIONS = (
    "S2A_MSIL2A_20171101T094131",  # ben_v2_mock, tile 35VNJ, 3 patches
    "S2A_MSIL2A_20170617T113321",  # ben_common_geotiff (2) and ben_v1_mock (1)
    "S2B_MSIL2A_20180515T094029",  # ben_v1_mock, 3 patches
    "S2B_MSIL2A_20170906T101019",  # ben_v1_mock, 3 patches, and the next granule of that pass:
    "S2B_MSIL2A_20170906T101020",
    "S2B_MSIL2A_20180204T94161",   # ben_common_geotiff
    "S2A_MSIL2A_20171002T112112",  # ben_v1_mock
)
"""Sentinel-2 acquisitions (product name up to the sensing time) whose patches, with
their Sentinel-1 partners, are held out; every other acquisition trains."""

TNO_VALIDATION_PAIRS = ("03", "08", "13", "18", "23")
"""TNO visible/thermal pairs (tno_cddfuse/{vi,ir}/NN.png) held out; the other 20 train."""

VALIDATION_ONLY = ("roadscene", "qgis_swellendam_map")
"""Collections under ../shared/data that are used for validation only, never in training."""


def bigearthnet_acquisition(patch_name: str) -> str:
    """'S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_37_88' or
    'S2A_MSIL2A_20170613T101031_87_48' -> 'S2A_MSIL2A_20170613T101031'."""
    return "_".join(patch_name.split("_")[:3])


def is_validation(collection: str, name: str) -> bool:
    """Whether scene ``name`` of ``collection`` is held out (collections: landsat,
    terramind, bigearthnet, tno, roadscene, qgis_swellendam_map)."""
    if collection in VALIDATION_ONLY:
        return True
    if collection == "landsat":
        return name in HELD_OUT_SCENES
    if collection == "terramind":
        return name in TERRAMIND_VALIDATION_SITES
    if collection == "bigearthnet":
        return bigearthnet_acquisition(name) in BIGEARTHNET_VALIDATION_ACQUISITIONS
    if collection == "tno":
        return name in TNO_VALIDATION_PAIRS
    raise ValueError(f"unknown collection {collection!r}")
