"""Storage backends: one protocol over S3, a local directory and memory."""
