from dagster import DynamicPartitionsDefinition

# One partition per broadcaster channel. Channels appear at run time (the UI, the CLI's
# `neutts-assets add-channel`, or a sensor), so the set is dynamic.
channels = DynamicPartitionsDefinition(name="channels")
