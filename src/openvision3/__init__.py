"""openvision3: an open PyTorch implementation of OpenVision 3 (arXiv 2601.15369)."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import openvision3` stays cheap for the CLI
    if name == "OpenVision3":
        from .models.openvision3 import OpenVision3
        return OpenVision3
    if name in ("Config", "get_config"):
        from . import config
        return getattr(config, name)
    raise AttributeError(name)
