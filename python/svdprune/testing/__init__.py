"""What tests, benchmarks and the demo share, and nothing a model integration needs:
``models`` builds small randomly initialised VLMs (and their processors) offline, ``photos``
turns the photographs that scikit-image and scikit-learn ship into token matrices."""
