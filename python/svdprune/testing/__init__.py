"""What tests, benchmarks and the demo share, and nothing a model integration needs:
``models`` builds small randomly initialised VLMs (and their processors) offline, ``images``
turns the photographs that scikit-image and scikit-learn ship into token matrices and model
inputs, ``measure`` names the selections they compare and times them."""
