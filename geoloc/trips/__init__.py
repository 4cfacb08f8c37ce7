"""Trips: time, tracks, camera clocks and sequences as evidence of where a photo was taken.

Nothing heavy is imported here: ``from geoloc.trips.tracks import read_tracks`` and the like.
"""
