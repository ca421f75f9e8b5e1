"""reprlab: experiments on the representations of standard and adversarially robust networks."""

from reprlab.errors import ReprlabError

__version__ = "0.1.0"
__all__ = ["ReprlabError", "__version__"]
