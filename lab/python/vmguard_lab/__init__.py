"""The local lab of real peers (dev and tests only).

Kubernetes, vSphere simulator, MinIO, nbdkit.
"""
