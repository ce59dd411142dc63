"""gradloc: object discovery from classifier gradients.

A CIFAR-10 wide ResNet classifies an image; the gradient of its class-masked output with
respect to the input pixels marks the influential pixels; thresholding, OpenCV morphology
and connected components turn them into bounding-box proposals.
"""
from .models.wrn import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, WeightsError, WideResNet, load_weights, wide_resnet
from .discovery.config import Options
from .discovery.pipeline import ProposalGenerator
from .data.preprocess import ImageError
from .attribution.saliency import METHODS, SaliencyMethod, make_method
from .sensitivity import Sensitivity, class_sensitivity

__version__ = "0.1.0"

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ImageError", "METHODS", "Options", "ProposalGenerator",
    "SaliencyMethod", "Sensitivity", "WeightsError", "WideResNet", "class_sensitivity", "load_weights", "make_method",
    "wide_resnet", "__version__",
]
