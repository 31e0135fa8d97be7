"""File-level access to filesystems inside archived disks."""
