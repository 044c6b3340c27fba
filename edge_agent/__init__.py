"""edgesentry edge agent: scores sensor streams with a signed TFLite model from the hub.

Must run on Raspberry-Pi-class gateways: never imports TensorFlow, Keras, scipy or SQLAlchemy.
"""

from shared import __version__

__all__ = ["__version__"]
