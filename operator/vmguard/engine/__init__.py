"""The engine: moving disk data between a transport and the store.

:mod:`.plan` says which chunks a disk needs read (changed areas against the parent's
index, and which changed chunks to read only in their changed areas), :mod:`.merge`
reads them and lays a merged chunk's areas over its parent's, :mod:`.pipeline` runs the
hashing, compression and upload in parallel with bounded memory, :mod:`.backup` writes
one archive of several disks and :mod:`.restore` writes an archived disk into a block
sink. It knows disks only as
:class:`~vmguard.transport.extents.BlockSource` and ``BlockSink``: nothing of vSphere or
Kubernetes; :mod:`vmguard.vm` drives it for a VM, ``vmguard disk`` for a file or an NBD
export.
"""
