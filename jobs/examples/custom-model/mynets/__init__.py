"""An example of a user's own package: a small ResNet-style network and its factory (see ../README.md)."""

from .nets import BasicBlock, TinyResNet, make_net

__all__ = ["BasicBlock", "TinyResNet", "make_net"]
