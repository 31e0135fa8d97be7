"""Data mover run by proxy Jobs: backup, restore and file restore between a transport and the store."""
