"""Input pipelines: corpus readers (``sources``), deterministic resumable
batching with background tokenisation (``pipeline``) and the optional
TensorFlow-free TFDS reader (``tfds_source``)."""
