"""Backbones: each returns a dict of named feature maps and declares their channels and stride."""
