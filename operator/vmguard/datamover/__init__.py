"""Data mover run by proxy Jobs.

Backup, restore and file restore between a transport and the store.
"""
