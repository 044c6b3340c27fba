"""edgesentry cloud hub: trains, quantizes, signs and rolls out models; stores what agents report."""

from shared import __version__

__all__ = ["__version__"]
