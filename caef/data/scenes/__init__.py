"""Scenes of real objects: a PASCAL VOC 2012 tree composed from an MNIST-family object source (Fashion-MNIST).

The generated dataset (:mod:`caef.data.synthetic`) is drawn to our own design; scenes put objects nobody here drew
into the same VOC layout, so every code path is the VOC one. Each object is one 28 px image of the source (IDX
format, gzip or plain), scaled bicubically to 40-80 px, shaded by its own grey levels, coloured and textured per
instance; 1..``max_objects`` of them are placed on a textured background, later ones over earlier ones, and an
object is only placed where every earlier one keeps ``min_visible`` of its mask (bounded occlusion). An object's
mask is its pixels above ``threshold`` with enclosed holes filled; its class is its label. ``train_aug`` images
draw objects from the source's ``train`` set and ``val`` images from ``t10k`` where both exist. Output is
deterministic per seed (and source); ``caef_scenes.json`` is the manifest, ``caef_meta/objects.json`` the
per-object metadata.
"""

from caef.data.scenes.config import FASHION_MNIST_CLASSES, MANIFEST, ScenesConfig
from caef.data.scenes.idx import FASHION_MNIST_DIRS, default_source, read_idx, read_object_sets
from caef.data.scenes.render import object_mask, render
from caef.data.scenes.tree import describe, generate_scenes, read_manifest

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "MANIFEST",
    "ScenesConfig",
    "default_source",
    "describe",
    "generate_scenes",
    "object_mask",
    "read_idx",
    "read_manifest",
    "read_object_sets",
    "render",
]
