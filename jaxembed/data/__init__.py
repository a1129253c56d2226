"""Input pipelines: the corpus record and its bookkeeping (``corpus``), UTF-8
text files with problems named by file and line (``textfile``), corpus readers
(``sources``), deterministic resumable batching with background tokenisation
(``pipeline``) and the optional TensorFlow-free TFDS reader (``tfds_source``)."""
