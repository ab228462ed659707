"""Post-processing of network outputs (DenseCRF); kept free of torch so worker processes start fast."""
