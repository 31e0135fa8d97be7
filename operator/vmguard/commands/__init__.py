"""Implementations of the ``vmguard`` sub-commands that need no cluster.

``vmguard.cli`` registers them; each module here adds its parsers and does the work
through the store, transport and datamover layers. Output for people goes to stdout
(progress to stderr); ``--json`` gives one JSON document for scripts.
"""
