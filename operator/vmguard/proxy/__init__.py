"""The proxy Job's process: ``vmguard proxy backup|restore`` inside a Job the operator built."""
