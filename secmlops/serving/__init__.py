"""The serving stage: the detection API and the controls around each request."""
