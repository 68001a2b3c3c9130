"""breed: on-line training of PDE surrogates from streamed simulations, steered by Breed."""

__version__ = "0.1.0"
