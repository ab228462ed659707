"""Dataset preparation for ``deeplab-prepare``: one module per family, shared download and archives."""
