"""Deployment: a DeepLab model as one graph (preprocessing, network, upsampling, output) for ONNX / torch.export."""
