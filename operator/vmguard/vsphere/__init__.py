"""vSphere access: the only place pyVmomi is imported (session, inventory, snapshots, CBT, restore)."""
