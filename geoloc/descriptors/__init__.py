"""Photos through a network: batched extraction here (``extract``) or on a Ray cluster (``ray``,
``cluster``), and the model a database was built with (``database_model``)."""
