"""Data: GEOM reading and building, featurisation, cached records, DataModule."""
