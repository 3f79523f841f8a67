"""What is Serve: the generic model deployment and its binder, the batcher, the model client and
the job processor. The models themselves are in ``models``."""
