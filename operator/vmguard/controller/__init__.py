"""Kubernetes control plane (kopf).

Registers handlers, one module per kind. Never touches disk data.
"""
