"""Locating photos: the ``Locator`` (``locator``), one rank-and-judge for locate and eval
(``judge``), the position estimate and its confidence (``estimate``), the weak-match bar
(``coverage``), and what a located query is (``results``)."""
