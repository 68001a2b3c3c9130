"""The training server: the receiver thread and its sockets (``receiver``, ``control``,
``guard``), the one data path of every STEP (``datapath``, in-thread or in the ``ingest``
child process), the simulation table (``simtable``), multi-rank sharding (``shard``,
``collective``), checkpoints and recovery, and the training loop that ties them (``server``)."""
