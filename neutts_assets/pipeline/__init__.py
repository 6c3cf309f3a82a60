"""The pure core: transcripts, source layout, decoding, cutting and the segment file format.

Nothing here imports Dagster; each module can be used from a script or a notebook alone.
"""
