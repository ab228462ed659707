"""The weights catalogue, verified downloads, registry-package encoders and provenance records."""
