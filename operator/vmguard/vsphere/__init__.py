"""vSphere access.

The only place pyVmomi is imported (session, inventory, snapshots, CBT, restore).
"""
