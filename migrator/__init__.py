"""migrator: move a Docker Distribution registry from filesystem storage to S3 without downtime."""

__version__ = "0.1.0"
