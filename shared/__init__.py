"""Code imported by both the hub and the edge agent.

Nothing in this package may import TensorFlow, Keras, scipy or SQLAlchemy: it runs on gateways.
"""

__version__ = "0.1.0"
