"""Building blocks of the lab's disk image factory (:mod:`vmguard_lab.images`).

One module per concern: ``content`` (seeded byte streams), ``tree`` (directory trees and
their manifests), ``sparse`` (hole-preserving copies and extent maps), ``table`` (GPT/MBR
through sfdisk), one module per filesystem (``ext4``, ``ntfs``, ``fat``, ``xfs``), and
``probe`` (reading files back with each filesystem's own tools). Nothing here mounts,
uses loop devices or needs root; everything is a pure function of its inputs.
"""
