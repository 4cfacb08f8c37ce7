"""Building a database: the run (``run``: ``index_photos``), what changed since the last one
(``changes``), the vocabulary a database fits (``vocabulary``), its refit (``refit``) and taking
stored rows back (``repair``)."""
