"""rtl: search which source datasets to pretrain on, and how to fine-tune, for a new vision target."""

__version__ = "0.1.0"
