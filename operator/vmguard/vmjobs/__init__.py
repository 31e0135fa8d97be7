"""One vSphere VM end to end: backup and restore, composing vsphere, transport and store.

``vsphere`` (snapshot cycle, CBT chain, config, restore targets, hot-add) and
``transport`` (NBD, hot-add devices) may not import each other; this package joins them
for one VM at a time, for the CLI (``vmguard vm backup|restore``) and the proxy.
The chunks themselves are moved by the data mover's engine (``vmguard.datamover``):
planning, the parallel pipeline and the statistics in the manifest are all its own.
"""
