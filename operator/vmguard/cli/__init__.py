"""The ``vmguard`` command line: one module per command group, shared options in one.

:mod:`.main` assembles the parser (the ``vmguard`` and ``kubectl-vmguard`` entry points;
``python -m vmguard.cli`` runs it too). Output for people goes to stdout (progress to
stderr); ``-o json|yaml`` gives one document for scripts. The conventions every command
keeps (options anywhere, exit codes, the cluster options) are in :mod:`.main` and
``docs/cli.md``.
"""
