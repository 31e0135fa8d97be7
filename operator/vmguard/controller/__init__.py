"""Kubernetes control plane (kopf): registers handlers, one module per kind. Never touches disk data."""
