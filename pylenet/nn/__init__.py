"""Layers and models, PyTorch-style: ``import pylenet.nn as nn``.

A model is a ``Module`` subclass with a ``forward()``, or a ``Sequential``. Parameter names,
layouts and default initialisation are PyTorch's, so a ``state_dict`` moves both ways between
a pylenet model and the same model written with torch.nn.
"""
from . import init
from .layers import (LAYERS, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, LeakyReLU,
                     Linear, LogSoftmax, MaxPool2d, ModuleList, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "ReLU", "Tanh", "Sigmoid",
           "LeakyReLU", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d", "LogSoftmax", "Softmax", "Identity",
           "Sequential", "ModuleList", "init", "LAYERS"]
