"""Segmentation heads: map backbone features to class logits."""
