"""Repository engine: chunks, indexes and archives in an object store.

Knows nothing of Kubernetes, vSphere or NBD.
"""
