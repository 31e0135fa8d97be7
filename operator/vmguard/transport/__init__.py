"""Block sources and sinks between vSphere disks and the data mover: NBD, hot-add, extents."""
