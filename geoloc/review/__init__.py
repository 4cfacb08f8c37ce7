"""``geoloc review``: a local page to check, correct and accept positions before anything is
written: the set under review and its decisions (``session``, ``decisions``), the server and its
security (``server``), thumbnails (``thumbs``), matched points (``matches``), writing what was
accepted through the existing writers (``apply``), and the run that ties them (``run``)."""
