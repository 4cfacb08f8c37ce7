"""Nearest neighbours and re-ranking: exact and IVF search (``search``), IVF-PQ past a size
(``compressed``), geometric verification of a candidate (``verify``) and the re-ranked shortlist
(``rerank``)."""
