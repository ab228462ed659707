"""Evaluation: the pipeline (network -> cache -> CRF -> metrics), inference (TTA, windows), metrics, trimap."""
