"""``deeplab-benchmark``: our presets against torchvision's DeepLab v3 (training, inference) or ONNX Runtime."""
