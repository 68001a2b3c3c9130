"""Learning: the surrogate's units (``normalisation``), the sample buffer (``reservoir``), the
model and its training step (``trainer``) and the fixed validation set (``validation``). Nothing
here touches a socket or a process."""
