"""What is written for people and other tools: CSV, GeoJSON, GPX and XMP (``export``), the HTML
map (``mapview``, ``mappage``), GPS written into photos (``writeback``) and its undo journal
(``undo_journal``)."""
