"""The pipeline's input handling: the data owner's dataset and the provider's package."""
