"""Trips: time, tracks, camera clocks and sequences as evidence of where a photo was taken."""
