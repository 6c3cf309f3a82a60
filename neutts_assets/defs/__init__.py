"""The thin Dagster layer: partitions, resources, IO managers and assets over the pure core."""
