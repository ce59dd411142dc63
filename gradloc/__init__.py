"""gradloc: object discovery from classifier gradients.

A CIFAR-10 wide ResNet classifies an image; the gradient of its class-masked output with
respect to the input pixels marks the influential pixels; thresholding, OpenCV morphology
and connected components turn them into bounding-box proposals.
"""
from .model import CIFAR10_CLASSES, WeightsError, WideResNet, load_weights, wide_resnet
from .config import Options
from .pipeline import ProposalGenerator
from .preprocess import ImageError
from .saliency import METHODS, SaliencyMethod, make_method
from .sensitivity import Sensitivity, class_sensitivity

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES", "ImageError", "METHODS", "Options", "ProposalGenerator",
    "SaliencyMethod", "Sensitivity", "WeightsError", "WideResNet", "class_sensitivity", "load_weights", "make_method",
    "wide_resnet", "__version__",
]
